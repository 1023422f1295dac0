"""What every pruner shares (sparseprop.pruning.base / _layers): layers switching between
dense and sparse form with the optimizer state carried over, unit="epoch" and history,
resuming from a checkpoint, shared / tied / frozen layers."""
from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseprop import SparseLinear
from sparseprop.pruning import (ACDCPruner, GradualMagnitudePruner, IterativeMagnitudePruner,
                                MagnitudePruner, RigLPruner)

from pruning_helpers import (assert_optimizer_trains, batches, mlp, nnz, opt_params,
                             train_step)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest)


# --------------------------------------------------------------------------------------
# optimizer state across a form switch
# --------------------------------------------------------------------------------------
def test_sgd_momentum_follows_dense_to_sparse():
    model = mlp((6, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for x, y in batches(3):
        train_step(model, opt, x, y)
    old_w = model[0].weight
    buf = opt.state[old_w]["momentum_buffer"].clone()
    bias = model[0].bias
    bias_buf = opt.state[bias]["momentum_buffer"].clone()
    pruner = MagnitudePruner(model, opt, sparsity=0.75, sparse_from=0.5)
    assert isinstance(model[0], SparseLinear)
    mask = pruner.masks()["0"]
    values = model[0].values
    assert torch.equal(opt.state[values]["momentum_buffer"], buf[mask])  # row-major CSR order
    assert old_w not in opt.state
    assert any(p is values for p in opt_params(opt)) and not any(p is old_w for p in opt_params(opt))
    assert model[0].bias is bias and torch.equal(opt.state[bias]["momentum_buffer"], bias_buf)
    assert_optimizer_trains(model, opt)
    # one more SGD step by hand: buf' = 0.9 buf + g, v' = v - lr buf'
    x, y = batches(1, seed=7)[0]
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    g = values.grad.clone()
    v = values.detach().clone()
    opt.step()
    torch.testing.assert_close(values.detach(), v - 0.05 * (0.9 * buf[mask] + g))


def test_adam_state_follows_dense_to_sparse_and_back():
    model = mlp((6, 16, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    data = batches(8)
    for x, y in data[:2]:
        train_step(model, opt, x, y)
    st = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.75, start_step=0, end_step=1,
                                    leave_enabled=False, sparse_from=0.5)
    # t=0 applied sparsity 0 (nothing); step to t=1: 0.75 -> sparse
    old_w = model[0].weight
    train_step(model, opt, *data[2])
    st = {k: v.clone() for k, v in opt.state[old_w].items()}
    pruner.step()
    assert isinstance(model[0], SparseLinear)
    mask = pruner.masks()["0"]
    new = opt.state[model[0].values]
    assert torch.equal(new["exp_avg"], st["exp_avg"][mask])
    assert torch.equal(new["exp_avg_sq"], st["exp_avg_sq"][mask])
    assert float(new["step"]) == float(st["step"]) == 3.0
    # t=2: masks lifted, back to dense: state scattered, zero at the pruned positions
    train_step(model, opt, *data[3])
    sparse_state = {k: v.clone() for k, v in opt.state[model[0].values].items()}
    pruner.step()
    assert type(model[0]) is nn.Linear
    dense_state = opt.state[model[0].weight]
    for key in ("exp_avg", "exp_avg_sq"):
        expected = torch.zeros(16, 6)
        expected[mask] = sparse_state[key]
        assert torch.equal(dense_state[key], expected), key
    assert float(dense_state["step"]) == 4.0
    assert_optimizer_trains(model, opt)


# --------------------------------------------------------------------------------------
# unit="epoch" and history
# --------------------------------------------------------------------------------------
def test_epoch_unit():
    model = mlp((6, 8, 3))
    pruner = GradualMagnitudePruner(model, sparsity=0.75, end_step=4, unit="epoch",
                                    sparse_from=None)
    for _ in range(10):
        assert pruner.step() is False
    assert pruner.t == 0 and pruner.sparsity() == 0.0
    expected = {1: 0.75 - 0.75 * 0.75 ** 3, 2: 0.75 - 0.75 / 8, 3: 0.75 - 0.75 / 64, 4: 0.75}
    for epoch in range(1, 6):
        assert pruner.epoch_step() == (epoch <= 4)
        assert pruner.t == epoch
        if epoch in expected:
            assert pruner.layer_sparsity()["0"] == pytest.approx(
                1 - round((1 - expected[epoch]) * 48) / 48)
    # a step-unit pruner ignores epoch_step
    model = mlp((6, 8, 3))
    pruner = MagnitudePruner(model, sparsity=0.5, at=1, sparse_from=None)
    assert pruner.epoch_step() is False and pruner.t == 0 and pruner.sparsity() == 0.0
    assert pruner.step() is True and pruner.sparsity() == pytest.approx(0.5)


def test_epoch_unit_step_still_enforces_masks():
    model = mlp((6, 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = MagnitudePruner(model, opt, sparsity=0.5, unit="epoch", sparse_from=None)
    mask = pruner.masks()["0"]
    with torch.no_grad():
        model[0].weight.add_(1.0)  # something outside the optimizer writes the weights
    pruner.step()
    assert (model[0].weight.detach()[~mask] == 0).all()
    assert pruner.t == 0


def test_history_records_changes():
    model = mlp((6, 16, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.8, start_step=2, end_step=12,
                                    frequency=3, sparse_from=None)
    assert pruner.history == []
    for x, y in batches(14):
        train_step(model, opt, x, y)
        pruner.step()
    hand = {2: 0.0, 5: 0.8 - 0.8 * 0.7 ** 3, 8: 0.8 - 0.8 * 0.4 ** 3, 11: 0.8 - 0.8 * 0.1 ** 3,
            12: 0.8}
    numels = {"0": 96, "2": 256, "4": 48}
    assert [h["step"] for h in pruner.history] == [2, 5, 8, 11, 12]
    for h in pruner.history:
        s = hand[h["step"]]
        expected = {n: 1 - round((1 - s) * k) / k for n, k in numels.items()}
        assert h["layers"] == pytest.approx(expected)
        kept = sum(round((1 - s) * k) for k in numels.values())
        assert h["sparsity"] == pytest.approx(1 - kept / 400)
    # the log is a record: later changes do not rewrite it
    assert pruner.history[0]["layers"] == {"0": 0.0, "2": 0.0, "4": 0.0}


def test_history_of_one_shot_and_acdc():
    model = mlp((6, 8, 3))
    pruner = MagnitudePruner(model, sparsity=0.5, sparse_from=None)
    assert len(pruner.history) == 1 and pruner.history[0]["step"] == 0
    assert pruner.history[0]["layers"] == {"0": 0.5, "2": 0.5}
    model = mlp((6, 8, 3))
    pruner = ACDCPruner(model, sparsity=0.5, total=8, warmup=1, sparse_length=2, dense_length=2,
                        sparse_from=None)
    for _ in range(8):
        pruner.step()
    assert [(h["step"], h["sparsity"]) for h in pruner.history] == \
        [(1, 0.5), (3, 0.0), (5, 0.5)]


# --------------------------------------------------------------------------------------
# resume from a checkpoint
# --------------------------------------------------------------------------------------
def _make_gmp(seed):
    model = mlp((6, 16, 16, 3), seed=seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.85, start_step=1, end_step=9,
                                    frequency=2, sparse_from=0.5)
    return model, opt, pruner


def _make_rigl(seed):
    model = mlp((6, 16, 16, 3), seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    pruner = RigLPruner(model, opt, sparsity=0.8, end_step=12, frequency=3, alpha=0.5, seed=11)
    return model, opt, pruner


def _make_imp(seed):
    model = mlp((4, 8, 8, 4), seed=seed, bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = IterativeMagnitudePruner(model, opt, sparsity=0.875, rounds=3, round_length=3,
                                      rewind_step=1)
    return model, opt, pruner


def _run(model, opt, pruner, data):
    losses = []
    for x, y in data:
        losses.append(train_step(model, opt, x, y))
        pruner.step()
    return losses


@pytest.mark.parametrize("make, d_in, n_cls, k, m", [
    (_make_gmp, 6, 3, 4, 8),
    (_make_gmp, 6, 3, 5, 3),
    (_make_rigl, 6, 3, 2, 9),    # checkpoint while capturing the gradient for t = 3
    (_make_rigl, 6, 3, 6, 6),    # right after an update
    (_make_imp, 4, 4, 2, 9),     # after the rewind point, before round 1
    (_make_imp, 4, 4, 4, 6),     # in round 2
], ids=["gmp-4", "gmp-5", "rigl-2", "rigl-6", "imp-2", "imp-4"])
def test_resume_matches_uninterrupted(make, d_in, n_cls, k, m):
    data = batches(k + m, d_in=d_in, n_cls=n_cls)
    model, opt, pruner = make(0)
    full_losses = _run(model, opt, pruner, data)
    full_masks, full_state = pruner.masks(), model.state_dict()
    full_history = [h["step"] for h in pruner.history]
    full_types = [type(mod) for mod in model]

    model, opt, pruner = make(0)
    first = _run(model, opt, pruner, data[:k])
    assert first == full_losses[:k]
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "pruner": pruner.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    del model, opt, pruner

    model, opt, pruner = make(1)  # a different init: everything must come from the checkpoint
    pruner.load_state_dict(ckpt["pruner"])
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    assert pruner.t == k
    assert_optimizer_trains(model, opt)
    rest = _run(model, opt, pruner, data[k:])
    assert rest == full_losses[k:]
    for n, mask in pruner.masks().items():
        assert torch.equal(mask, full_masks[n]), n
    state = model.state_dict()
    assert state.keys() == full_state.keys()
    for key, value in state.items():
        assert torch.equal(value, full_state[key]), key
    assert [h["step"] for h in pruner.history] == full_history
    assert [type(mod) for mod in model] == full_types


def test_resume_in_memory_history_and_types():
    data = batches(10)
    model, opt, pruner = _make_gmp(0)
    _run(model, opt, pruner, data[:6])
    # deepcopy: torch's Optimizer.load_state_dict shares same-dtype state tensors with the
    # source dict, so without it both optimizers would update the same momentum buffers.
    ckpt = copy.deepcopy({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "pruner": pruner.state_dict()})
    types = [type(m) for m in model]
    hist = [h["step"] for h in pruner.history]
    model2, opt2, pruner2 = _make_gmp(1)
    pruner2.load_state_dict(ckpt["pruner"])
    assert [type(m) for m in model2] == types
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["optimizer"])
    assert [h["step"] for h in pruner2.history] == hist == [1, 3, 5]
    assert _run(model2, opt2, pruner2, data[6:]) == _run(model, opt, pruner, data[6:])


# --------------------------------------------------------------------------------------
# model structure: shared modules, tied and frozen weights
# --------------------------------------------------------------------------------------
def test_same_module_under_two_names_is_one_layer():
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = MagnitudePruner(model, opt, sparsity=0.75)
    assert list(pruner.layers) == ["0"]
    assert isinstance(model[0], SparseLinear) and model[0] is model[2]
    assert model[0].nnz == 16
    assert_optimizer_trains(model, opt)


def test_tied_weights_stay_dense_and_tied():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    model[2].weight = model[0].weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = MagnitudePruner(model, opt, sparsity=0.75)
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear
    assert model[0].weight is model[2].weight
    assert nnz(model[0].weight != 0) == 16
    train_step(model, opt, torch.randn(4, 8), torch.randint(0, 8, (4,)))
    pruner.step()
    assert model[0].weight is model[2].weight and nnz(model[0].weight != 0) == 16


@pytest.mark.parametrize("sparse_from", [None, 0.5])
def test_frozen_layer_is_pruned_and_stays_frozen(sparse_from):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    model[0].requires_grad_(False)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    pruner = MagnitudePruner(model, opt, sparsity=0.5, sparse_from=sparse_from)
    frozen = pruner.layers["0"].parameters()[0]
    assert not frozen.requires_grad
    assert all(frozen is not p for g in opt.param_groups for p in g["params"])
    assert nnz(pruner.masks()["0"]) == 32
    train_step(model, opt, torch.randn(4, 8), torch.randint(0, 4, (4,)))
    assert pruner.step() is False

"""Every pruning algorithm (sparseprop.pruning presets), its masks checked against values
computed by hand in the test: one-shot, gradual and iterative magnitude, random / SNIP /
SynFlow at initialization, AC/DC, RigL and GraNet."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseprop import SparseConv2d, SparseLinear
from sparseprop._sparse_module import SparseWeightModule
from sparseprop.pruning import (ACDCPruner, GradualMagnitudePruner, GraNetPruner,
                                IterativeMagnitudePruner, MagnitudePruner, RandomPruner,
                                RigLPruner,
                                SNIPPruner, SynFlowPruner, cubic_sparsity, er_densities)
from sparseprop.pruning.dynamic import drop_and_grow

from pruning_helpers import (assert_optimizer_trains, batches, dense_weight, erk_raw, linear_names,
                             mlp, nnz, train_step)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest)


# --------------------------------------------------------------------------------------
# MagnitudePruner (one-shot)
# --------------------------------------------------------------------------------------
def _hand_model():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_((torch.arange(16.0) - 7.5).view(4, 4) * torch.tensor([1.0, -1.0] * 8).view(4, 4))
        model[2].weight.copy_(torch.tensor([[0.1, -0.2, 0.3, -0.4], [0.5, -0.6, 0.7, -0.8]]))
    return model


def test_magnitude_pruner_keeps_largest():
    model = _hand_model()
    w0, w2 = dense_weight(model[0]), dense_weight(model[2])
    bias0 = model[0].bias.detach().clone()
    x = torch.randn(5, 4)
    pruner = MagnitudePruner(model, sparsity=0.75, sparse_from=0.7)
    # layer 0: |w| = 7.5, 6.5, ..., 0.5, 0.5, ..., 7.5: keep 4 = |w| > 6
    m0 = w0.abs() > 6
    assert nnz(m0) == 4
    # layer 2: 8 weights, keep 2: 0.7 and 0.8
    m2 = w2.abs() > 0.65
    assert nnz(m2) == 2
    assert isinstance(model[0], SparseLinear) and isinstance(model[2], SparseLinear)
    assert torch.equal(pruner.masks()["0"], m0) and torch.equal(pruner.masks()["2"], m2)
    assert torch.equal(model[0].weight.detach(), w0 * m0)
    assert torch.equal(model[2].weight.detach(), w2 * m2)
    assert torch.equal(model[0].bias.detach(), bias0)
    ref = torch.relu(x @ (w0 * m0).t() + bias0) @ (w2 * m2).t() + model[2].bias.detach()
    torch.testing.assert_close(model(x), ref)
    assert pruner.sparsity() == pytest.approx(0.75)


def test_magnitude_pruner_sparse_from():
    model = _hand_model()
    MagnitudePruner(model, sparsity=0.75, sparse_from=None)
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear
    assert nnz(model[0].weight != 0) == 4 and nnz(model[2].weight != 0) == 2
    model = _hand_model()
    MagnitudePruner(model, sparsity=0.75, sparse_from=0.8)  # not sparse enough to switch
    assert type(model[0]) is nn.Linear
    model = _hand_model()
    MagnitudePruner(model, sparsity=0.75, sparse_from=0.75)  # exactly at the threshold
    assert isinstance(model[0], SparseLinear)


def test_magnitude_pruner_at_later_tick():
    model = _hand_model()
    pruner = MagnitudePruner(model, sparsity=0.5, at=3, sparse_from=None)
    assert pruner.sparsity() == 0.0
    assert [pruner.step() for _ in range(5)] == [False, False, True, False, False]
    assert pruner.sparsity() == pytest.approx(0.5)


def test_magnitude_pruner_conv():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3),
                          nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    ref = copy.deepcopy(model)
    x = torch.randn(2, 3, 6, 6)
    pruner = MagnitudePruner(model, sparsity=0.8, sparse_from=0.7)
    assert isinstance(model[0], SparseConv2d) and isinstance(model[2], SparseConv2d)
    assert isinstance(model[4], SparseLinear)
    for name in ("0", "2", "4"):
        w = ref.get_submodule(name).weight.detach()
        k = round(0.2 * w.numel())
        threshold = w.abs().flatten().sort(descending=True).values[k - 1]
        expected = w.abs() >= threshold
        assert nnz(expected) == k
        assert torch.equal(pruner.masks()[name], expected)
        with torch.no_grad():
            ref.get_submodule(name).weight.mul_(expected)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)


def test_magnitude_pruner_global_and_lamp():
    model = mlp((6, 16, 16, 3))
    with torch.no_grad():
        model[4].weight.mul_(1e-3)  # far smaller than the others
    ref = copy.deepcopy(model)
    pruner = MagnitudePruner(model, sparsity=0.9, allocation="global", sparse_from=None)
    ls = pruner.layer_sparsity()
    assert ls["4"] == 1.0  # global magnitude collapses the small layer
    total = 96 + 256 + 48
    assert sum(nnz(m) for m in pruner.masks().values()) == round(0.1 * total)
    # hand check: the kept weights are the top 40 |w| over all layers
    allw = torch.cat([ref.get_submodule(n).weight.detach().abs().flatten() for n in ("0", "2", "4")])
    threshold = allw.sort(descending=True).values[39]
    for n, m in pruner.masks().items():
        assert torch.equal(m, ref.get_submodule(n).weight.detach().abs() >= threshold)
    # LAMP, same model: every layer keeps at least its largest weight
    model = copy.deepcopy(ref)
    pruner = MagnitudePruner(model, sparsity=0.9, allocation="global", score="lamp", sparse_from=None)
    for n, m in pruner.masks().items():
        w = ref.get_submodule(n).weight.detach().abs()
        assert m.flatten()[w.argmax()]
    assert sum(nnz(m) for m in pruner.masks().values()) == round(0.1 * total)


def test_magnitude_pruner_layers_and_exclude():
    model = mlp((6, 8, 8, 3))
    pruner = MagnitudePruner(model, sparsity=0.5, layers=["0", "4.weight"], sparse_from=None)
    assert list(pruner.layers) == ["0", "4"]
    assert nnz(model[2].weight != 0) == 64
    assert nnz(model[0].weight != 0) == 24 and nnz(model[4].weight != 0) == 12
    model = mlp((6, 8, 8, 3))
    pruner = MagnitudePruner(model, sparsity=0.5, exclude=r"[24]", sparse_from=None)
    assert list(pruner.layers) == ["0"]


# --------------------------------------------------------------------------------------
# GradualMagnitudePruner
# --------------------------------------------------------------------------------------
def _gmp_expected(t):
    return cubic_sparsity(t, 0.0, 0.8, 2, 12)  # checked by hand in test_cubic_* above


def test_gmp_uniform_follows_schedule_and_masks_are_monotone():
    model = mlp((6, 16, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.8, start_step=2, end_step=12,
                                    frequency=3, sparse_from=None)
    numels = {"0": 96, "2": 256, "4": 48}
    hand = {2: 0.0, 5: 0.8 - 0.8 * 0.7 ** 3, 8: 0.8 - 0.8 * 0.4 ** 3, 11: 0.8 - 0.8 * 0.1 ** 3,
            12: 0.8}
    expected_counts = {n: k for n, k in numels.items()}
    prev = pruner.masks()
    for t, (x, y) in enumerate(batches(16), start=1):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for n in numels:  # the gradient of pruned weights is zeroed by the hook
            assert (model.get_submodule(n).weight.grad[~prev[n]] == 0).all()
        opt.step()
        changed = pruner.step()
        assert changed == (t in hand)
        if t in hand:
            assert _gmp_expected(t) == pytest.approx(hand[t])
            expected_counts = {n: round((1 - hand[t]) * k) for n, k in numels.items()}
        masks = pruner.masks()
        for n, k in numels.items():
            layer = model.get_submodule(n)
            assert type(layer) is nn.Linear
            assert nnz(masks[n]) == expected_counts[n], (t, n)
            assert not (masks[n] & ~prev[n]).any()  # never comes back
            assert (layer.weight.detach()[~masks[n]] == 0).all()
        prev = masks
    assert pruner.sparsity() == pytest.approx(1 - sum(round(0.2 * k) for k in numels.values()) / 400)


def test_gmp_global_reaches_target():
    model = mlp((6, 16, 16, 3))
    with torch.no_grad():
        model[2].weight.mul_(0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.85, end_step=6, frequency=2,
                                    scope="global", sparse_from=0.9)
    for x, y in batches(8):
        train_step(model, opt, x, y)
        pruner.step()
    kept = sum(nnz(m) for m in pruner.masks().values())
    assert kept == round(0.15 * 400)
    ls = pruner.layer_sparsity()
    assert len({round(v, 6) for v in ls.values()}) == 3  # not uniform
    assert ls["2"] > 0.85  # the scaled-down layer is pruned harder
    # layers at least sparse_from sparse run on the sparse kernels
    for n, s in ls.items():
        assert isinstance(model.get_submodule(n), SparseLinear) == (s >= 0.9)


def test_gmp_switches_to_sparse_and_keeps_training():
    model = mlp((6, 16, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.9, end_step=8, frequency=2,
                                    sparse_from=0.5)
    for t, (x, y) in enumerate(batches(12), start=1):
        train_step(model, opt, x, y)
        pruner.step()
        s = cubic_sparsity(min(t - t % 2, 8), 0.0, 0.9, 0, 8)
        for n in ("0", "2", "4"):
            assert isinstance(model.get_submodule(n), SparseLinear) == (s >= 0.5), (t, n)
        assert_optimizer_trains(model, opt)
    before = model[2].values.detach().clone()
    train_step(model, opt, *batches(1, seed=9)[0])
    assert not torch.equal(before, model[2].values.detach())


def test_gmp_leave_enabled_false_lifts_masks():
    model = mlp((6, 8, 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.75, end_step=4, frequency=2,
                                    leave_enabled=False, sparse_from=0.5)
    data = batches(8)
    for t in range(1, 5):
        train_step(model, opt, *data[t - 1])
        pruner.step()
    assert pruner.sparsity() == pytest.approx(0.75, abs=0.01)
    assert all(isinstance(model.get_submodule(n), SparseLinear) for n in ("0", "2", "4"))
    train_step(model, opt, *data[4])
    assert pruner.step() is True  # t = 5 = end_step + 1: masks lifted
    assert pruner.sparsity() == 0.0
    assert all(type(model.get_submodule(n)) is nn.Linear for n in ("0", "2", "4"))
    assert all(m.all() for m in pruner.masks().values())
    assert_optimizer_trains(model, opt)
    zeros = (model[2].weight == 0).clone()
    assert nnz(zeros) >= 48  # the pruned weights restart at zero
    for t in range(6, 9):
        train_step(model, opt, *data[t - 1])
        assert pruner.step() is False
    assert nnz(zeros & (model[2].weight != 0)) > 0  # and grow back


def test_gmp_leave_enabled_true_keeps_masks():
    model = mlp((6, 8, 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    pruner = GradualMagnitudePruner(model, opt, sparsity=0.75, end_step=4, frequency=2,
                                    sparse_from=None)
    for x, y in batches(10):
        train_step(model, opt, x, y)
        pruner.step()
    kept = {n: nnz(m) for n, m in pruner.masks().items()}
    assert kept == {"0": round(0.25 * 48), "2": round(0.25 * 64), "4": round(0.25 * 24)}
    assert nnz(model[2].weight != 0) == 16


# --------------------------------------------------------------------------------------
# IterativeMagnitudePruner
# --------------------------------------------------------------------------------------
def _imp_model():
    return mlp((4, 8, 8, 4), seed=3, bn=True)  # linears '0' (32), '3' (64), '6' (32)


def test_imp_rounds_rewind_and_reset():
    model = _imp_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = IterativeMagnitudePruner(model, opt, sparsity=0.875, rounds=3, round_length=4,
                                      rewind_step=1)
    data = batches(20, d_in=4, n_cls=4)
    saved = None
    prev = pruner.masks()
    history_rounds = []
    for t in range(1, 21):
        train_step(model, opt, *data[t - 1])
        changed = pruner.step()
        if t == 1:  # the rewind point: state after step 1
            saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        assert changed == (t in (4, 8, 12))
        masks = pruner.masks()
        kept = sum(nnz(m) for m in masks.values())
        r = min(t // 4, 3)
        assert kept == 128 // 2 ** r, t  # rate 0.5: 64, 32, 16 weights
        assert pruner.sparsity() == pytest.approx(1 - 0.5 ** r)
        for n, m in masks.items():
            assert not (m & ~prev[n]).any()
        if changed:
            history_rounds.append(t)
            assert len(opt.state) == 0  # reset_optimizer
            for n in ("0", "3", "6"):
                layer = model.get_submodule(n)
                torch.testing.assert_close(layer.weight.detach(), saved[f"{n}.weight"] * masks[n],
                                           rtol=0, atol=0)
                assert torch.equal(layer.bias.detach(), saved[f"{n}.bias"])
            for n in ("1", "4"):
                bn = model.get_submodule(n)
                for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    assert torch.equal(getattr(bn, k).detach(), saved[f"{n}.{k}"]), (t, n, k)
            assert_optimizer_trains(model, opt)
        prev = masks
    assert history_rounds == [4, 8, 12]
    # global allocation: some layer is past the 0.7 default and runs sparse
    assert any(isinstance(model.get_submodule(n), SparseLinear) for n in ("0", "3", "6"))


def test_imp_without_optimizer_reset_and_uniform():
    model = _imp_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    pruner = IterativeMagnitudePruner(model, opt, sparsity=0.75, rounds=2, round_length=3,
                                      allocation="uniform", reset_optimizer=False, sparse_from=None)
    assert pruner.rewind_point is not None  # rewind_step 0: saved at creation
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data = batches(6, d_in=4, n_cls=4)
    for t in range(1, 4):
        train_step(model, opt, *data[t - 1])
        pruner.step()
    assert len(opt.state) > 0
    rate = 0.5  # 1 - (1 - 0.75) ** (1 / 2)
    assert {n: nnz(m) for n, m in pruner.masks().items()} == \
        {"0": round(32 * (1 - rate)), "3": round(64 * (1 - rate)), "6": round(32 * (1 - rate))}
    for n in ("0", "3", "6"):
        assert torch.equal(model.get_submodule(n).weight.detach(),
                           init[f"{n}.weight"] * pruner.masks()[n])
    assert torch.equal(model[1].running_mean, init["1.running_mean"])


# --------------------------------------------------------------------------------------
# random / SNIP / SynFlow at initialization
# --------------------------------------------------------------------------------------
def _conv_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 4))


@pytest.mark.parametrize("kind", ["er", "erk"])
def test_random_pruner_er_densities(kind):
    model = _conv_net()
    pruner = RandomPruner(model, sparsity=0.8, allocation=kind, seed=5)
    kernels = {"0": (8, 3, 3, 3), "2": (8, 8, 3, 3), "4": (32, 128, 1, 1), "6": (4, 32, 1, 1)}
    assert pruner.kernels() == kernels
    expected = er_densities(kernels, 0.8, kind)
    if kind == "erk":  # hand check: eps over the layers, the first conv saturates?
        numel = {n: math.prod(k) for n, k in kernels.items()}
        budget = 0.2 * sum(numel.values())
        eps = budget / sum(erk_raw(k) * numel[n] for n, k in kernels.items())
        if all(eps * erk_raw(k) <= 1 for k in kernels.values()):
            assert expected == pytest.approx({n: eps * erk_raw(k) for n, k in kernels.items()})
    for n, mask in pruner.masks().items():
        assert nnz(mask) == round(expected[n] * mask.numel()), n
    total = sum(m.numel() for m in pruner.masks().values())
    assert pruner.sparsity() == pytest.approx(0.8, abs=2 / total)
    # same seed, same masks; another seed, other masks
    again = RandomPruner(_conv_net(), sparsity=0.8, allocation=kind, seed=5).masks()
    other = RandomPruner(_conv_net(), sparsity=0.8, allocation=kind, seed=6).masks()
    assert all(torch.equal(again[n], m) for n, m in pruner.masks().items())
    assert any(not torch.equal(other[n], m) for n, m in pruner.masks().items())


def test_random_pruner_uniform_and_weights_untouched():
    model = _conv_net()
    ref = copy.deepcopy(model)
    pruner = RandomPruner(model, sparsity=0.6, allocation="uniform", sparse_from=None)
    for n, mask in pruner.masks().items():
        assert nnz(mask) == round(0.4 * mask.numel())
        w = ref.get_submodule(n).weight.detach()
        assert torch.equal(model.get_submodule(n).weight.detach(), w * mask)


def test_snip_scores_and_pruner():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    ref = copy.deepcopy(model)
    x, y = batches(1)[0]
    # hand computation of |g * w| on the dense model
    clone = copy.deepcopy(ref)
    loss = F.cross_entropy(clone(x), y)
    g0, g3 = torch.autograd.grad(loss, [clone[0].weight, clone[3].weight])
    sal = {"0": (g0 * clone[0].weight).abs().detach(), "3": (g3 * clone[3].weight).abs().detach()}
    pruner = SNIPPruner(model, sparsity=0.8, inputs=x, targets=y)
    allsal = torch.cat([s.flatten() for s in sal.values()])
    k = round(0.2 * allsal.numel())
    threshold = allsal.sort(descending=True).values[k - 1]
    masks = pruner.masks()
    assert sum(nnz(m) for m in masks.values()) == k
    for n, m in masks.items():
        assert torch.equal(m, sal[n] >= threshold), n
        assert torch.equal(model.get_submodule(n).weight.detach(),
                           ref.get_submodule(n).weight.detach() * m)
        assert torch.equal(model.get_submodule(n).bias.detach(), ref.get_submodule(n).bias.detach())
    for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(model[1], key).detach(), getattr(ref[1], key).detach()), key
    assert all(p.grad is None for p in model.parameters())
    assert pruner.sparsity() == pytest.approx(1 - k / (96 + 48))


def _deep_narrow(depth=8, width=8, seed=0, bias=True):
    torch.manual_seed(seed)
    mods = [nn.Linear(4, width, bias=bias), nn.ReLU()]
    for _ in range(depth - 2):
        mods += [nn.Linear(width, width, bias=bias), nn.ReLU()]
    mods.append(nn.Linear(width, 2, bias=bias))
    return nn.Sequential(*mods)


def _synflow_collapse_check(bias):
    model = _deep_narrow(bias=bias)
    with torch.no_grad():
        model[6].weight.mul_(1e-3)
    ref = copy.deepcopy(model)
    x = torch.randn(3, 4)
    # global magnitude at this sparsity empties the scaled-down layer...
    collapsed = MagnitudePruner(copy.deepcopy(ref), sparsity=0.97, allocation="global",
                                sparse_from=None)
    assert collapsed.layer_sparsity()["6"] == 1.0
    # ...SynFlow does not empty any layer
    pruner = SynFlowPruner(model, sparsity=0.97, example_input=x, iterations=30, sparse_from=None)
    masks = pruner.masks()
    total = sum(m.numel() for m in masks.values())
    assert sum(nnz(m) for m in masks.values()) == round(0.03 * total)
    assert all(nnz(m) > 0 for m in masks.values())
    # the masked all-positive network still carries flow from input to output
    with torch.no_grad():
        h = torch.ones(1, 4, dtype=torch.float64)
        for n in linear_names(ref):
            h = h @ (ref.get_submodule(n).weight.double().abs() * masks[n]).t()
        assert h.sum() > 0
    for n in linear_names(ref):
        assert torch.equal(model.get_submodule(n).weight.detach(),
                           ref.get_submodule(n).weight.detach() * masks[n])
        if bias:
            assert torch.equal(model.get_submodule(n).bias.detach(),
                               ref.get_submodule(n).bias.detach())


def test_synflow_avoids_layer_collapse_without_biases():
    _synflow_collapse_check(bias=False)


def test_synflow_avoids_layer_collapse_with_default_biases():
    _synflow_collapse_check(bias=True)


def test_synflow_collapses_with_one_iteration_but_not_with_many():
    # single-shot SynFlow is not collapse-free: the iterations are what matters
    model = _deep_narrow(bias=False)
    one = SynFlowPruner(copy.deepcopy(model), sparsity=0.97, example_input=torch.randn(1, 4),
                        iterations=1, sparse_from=None)
    assert any(nnz(m) == 0 for m in one.masks().values())
    many = SynFlowPruner(model, sparsity=0.97, example_input=torch.randn(1, 4), iterations=20,
                         sparse_from=None)
    assert all(nnz(m) > 0 for m in many.masks().values())


def test_synflow_one_iteration_scores():
    # one iteration: a single global threshold on |dR/dw * w| of the abs network
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ref = copy.deepcopy(model)
    w0 = ref[0].weight.detach().double().abs().requires_grad_()
    w2 = ref[2].weight.detach().double().abs().requires_grad_()
    b0, b2 = ref[0].bias.detach().double().abs(), ref[2].bias.detach().double().abs()
    r = (torch.relu(torch.ones(1, 3, dtype=torch.float64) @ w0.t() + b0) @ w2.t() + b2).sum()
    g0, g2 = torch.autograd.grad(r, [w0, w2])
    sal = torch.cat([(g0 * w0).flatten(), (g2 * w2).flatten()]).detach()
    k = round(0.5 * 20)
    keep = torch.zeros(20, dtype=torch.bool)
    keep[sal.argsort(descending=True)[:k]] = True
    pruner = SynFlowPruner(model, sparsity=0.5, example_input=torch.randn(7, 3), iterations=1)
    assert torch.equal(pruner.masks()["0"].flatten(), keep[:12])
    assert torch.equal(pruner.masks()["2"].flatten(), keep[12:])


# --------------------------------------------------------------------------------------
# AC/DC
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sparse_from", [0.7, None])
def test_acdc_pruner_phases(sparse_from):
    model = mlp((6, 16, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pruner = ACDCPruner(model, opt, sparsity=0.8, total=20, warmup=4, sparse_length=3,
                        dense_length=2, final_sparse_length=5, sparse_from=sparse_from)
    sparse_ticks = {4, 5, 6, 9, 10, 11, 14, 15, 16, 17, 18, 19}
    numels = {"0": 96, "2": 256, "4": 48}
    prev_masks, prev_sparse = pruner.masks(), False
    changes = []
    for t, (x, y) in enumerate(batches(22), start=1):
        kept_before = {n: model.get_submodule(n).weight.detach()[prev_masks[n]].clone()
                       for n in numels}
        train_step(model, opt, x, y)
        if pruner.step():
            changes.append(t)
        sparse_now = t in sparse_ticks or t >= 20
        if prev_sparse and sparse_now:  # inside a compressed phase the kept weights train
            for n in numels:
                now = model.get_submodule(n).weight.detach()[prev_masks[n]]
                assert not torch.equal(now, kept_before[n]), (t, n)
        masks = pruner.masks()
        for n, k in numels.items():
            layer = model.get_submodule(n)
            if sparse_now:
                assert nnz(masks[n]) == round(0.2 * k)
                expect_cls = SparseLinear if sparse_from is not None else nn.Linear
                assert type(layer) is expect_cls, (t, n)
                assert (layer.weight.detach()[~masks[n]] == 0).all()
                if prev_sparse:  # the mask is fixed for the whole phase
                    assert torch.equal(masks[n], prev_masks[n])
                else:  # a new phase: a new mask
                    assert not torch.equal(masks[n], prev_masks[n])
            else:
                assert type(layer) is nn.Linear, (t, n)
                assert masks[n].all()
                if prev_sparse:  # decompressed: pruned weights restart from zero
                    assert (layer.weight.detach()[~prev_masks[n]] == 0).all()
        assert_optimizer_trains(model, opt)
        prev_masks, prev_sparse = masks, sparse_now
    assert changes == [4, 7, 9, 12, 14]


def test_acdc_new_phase_keeps_top_magnitudes():
    model = mlp((6, 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = ACDCPruner(model, opt, sparsity=0.5, total=10, warmup=2, sparse_length=2,
                        dense_length=2, sparse_from=None)
    data = batches(4)
    train_step(model, opt, *data[0])
    pruner.step()
    train_step(model, opt, *data[1])
    w = {n: model.get_submodule(n).weight.detach().clone() for n in ("0", "2")}
    assert pruner.step()  # t = 2: first compressed phase
    for n, m in pruner.masks().items():
        assert nnz(m) == w[n].numel() // 2
        assert w[n].abs()[m].min() > w[n].abs()[~m].max()
        assert torch.equal(model.get_submodule(n).weight.detach(), w[n] * m)


# --------------------------------------------------------------------------------------
# RigL
# --------------------------------------------------------------------------------------
def _dense_grads(model, names, x, y):
    """d loss / d dense weight of each layer, on a dense copy with the same values."""
    twin = nn.Sequential(*[(m.to_dense() if isinstance(m, SparseWeightModule) else copy.deepcopy(m))
                           for m in model])
    loss = F.cross_entropy(twin(x), y)
    grads = torch.autograd.grad(loss, [twin.get_submodule(n).weight for n in names])
    return dict(zip(names, grads))


def test_drop_and_grow_hand_example():
    w = torch.tensor([[0.5, 0.0, -0.1], [0.3, 0.0, 0.9]])
    mask = torch.tensor([[True, False, True], [True, False, True]])
    grad = torch.tensor([[0.0, 5.0, 0.0], [0.0, 1.0, 0.0]])
    # drop the 2 smallest kept |w| (-0.1 at (0,2), 0.3 at (1,0)), grow (0,1) and (1,1)
    out = drop_and_grow(w, mask, grad, 2)
    assert out.tolist() == [[True, True, False], [False, True, True]]
    assert nnz(out) == nnz(mask)
    # a just-dropped position can be grown back when its gradient is the largest
    grad2 = torch.tensor([[0.0, 5.0, 10.0], [0.0, 1.0, 0.0]])
    assert drop_and_grow(w, mask, grad2, 1).tolist() == mask.tolist()
    # count is limited by the free positions (2 here) and 0 changes nothing
    big = drop_and_grow(w, mask, grad, 5)
    assert nnz(big) == 4 and big.tolist() == [[True, True, False], [False, True, True]]
    assert drop_and_grow(w, mask, grad, 0) is mask


def _run_rigl_checked(model, opt, pruner, names, data, alpha, end):
    """Train on ``data`` and check every RigL update against a hand implementation:
    drop the ``int(fraction * nnz)`` smallest |w| (after the optimizer step), grow the largest
    |dense grad| (of that step's backward) outside what is left. Returns the update ticks."""
    counts = {n: nnz(m) for n, m in pruner.masks().items()}
    updates, moved = [], 0
    for t, (x, y) in enumerate(data, start=1):
        before = pruner.masks()
        grads = _dense_grads(model, names, x, y)
        train_step(model, opt, x, y)
        weights_after_step = pruner.weights()
        changed = pruner.step()
        masks = pruner.masks()
        assert {n: nnz(m) for n, m in masks.items()} == counts, t  # sparsity is constant
        if not changed:
            assert all(torch.equal(masks[n], before[n]) for n in names)
            continue
        updates.append(t)
        fraction = alpha / 2 * (1 + math.cos(math.pi * t / end))
        for n in names:
            count = int(fraction * counts[n])
            dropped = before[n] & ~masks[n]
            grown = masks[n] & ~before[n]
            assert nnz(dropped) == nnz(grown) <= count
            moved += nnz(dropped)
            w = weights_after_step[n].abs().flatten()
            kept_idx = torch.nonzero(before[n].flatten()).flatten()
            order = kept_idx[w[kept_idx].argsort(descending=True)]
            kept = torch.zeros(w.numel(), dtype=torch.bool)
            kept[order[:counts[n] - count]] = True
            g = grads[n].abs().flatten().masked_fill(kept, -1.0)
            expected = kept.clone()
            expected[g.argsort(descending=True)[:count]] = True
            assert torch.equal(masks[n].flatten(), expected), (t, n)
            # regrown weights start at zero, pruned ones are zero
            new_w = model.get_submodule(n).weight.detach()
            assert (new_w[grown] == 0).all() and (new_w[~masks[n]] == 0).all()
        assert_optimizer_trains(model, opt)
    assert moved > 0  # the masks really changed
    return updates


def test_rigl_update_counts_and_constant_sparsity():
    model = mlp((6, 16, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    f, end, alpha = 3, 14, 0.5
    pruner = RigLPruner(model, opt, sparsity=0.8, end_step=end, frequency=f, alpha=alpha)
    names = ["0", "2", "4"]
    # ERK by hand: raw (6+16+2)/96 = 1/4, (16+16+2)/256, (16+3+2)/48; eps = 0.2*400 / (24+34+21)
    eps = 80 / 79
    counts = {"0": round(eps / 4 * 96), "2": round(eps * 34 / 256 * 256), "4": round(eps * 21 / 48 * 48)}
    assert {n: nnz(m) for n, m in pruner.masks().items()} == counts
    # mixed forms: '4' is below sparse_from = 0.7, the others above
    assert [type(model.get_submodule(n)) for n in names] == [SparseLinear, SparseLinear, nn.Linear]
    updates = _run_rigl_checked(model, opt, pruner, names, batches(20), alpha, end)
    # frequency 3 before end_step 14: 3, 6, 9, 12 (never at or after 14)
    assert updates == [3, 6, 9, 12]
    assert pruner.updates == 4
    assert not any(layer.capturing for layer in pruner.layers.values())


def test_rigl_conv_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = RigLPruner(model, opt, sparsity=0.85, end_step=6, frequency=2, alpha=0.5,
                        allocation="uniform")
    assert [type(model[i]) for i in (0, 2, 4)] == [SparseConv2d, SparseConv2d, SparseLinear]
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 4, (4,), generator=g))
            for _ in range(6)]
    updates = _run_rigl_checked(model, opt, pruner, ["0", "2", "4"], data, 0.5, 6)
    assert updates == [2, 4]



def test_rigl_dense_layers_with_sparse_from_none():
    model = mlp((6, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = RigLPruner(model, opt, sparsity=0.75, end_step=10, frequency=2, alpha=0.4,
                        allocation="uniform", sparse_from=None)
    first = pruner.masks()
    for x, y in batches(10):
        train_step(model, opt, x, y)
        pruner.step()
        for n, m in pruner.masks().items():
            assert nnz(m) == m.numel() // 4
            assert type(model.get_submodule(n)) is nn.Linear
            assert (model.get_submodule(n).weight.detach()[~m] == 0).all()
    assert pruner.updates == 4  # 2, 4, 6, 8
    assert any(not torch.equal(first[n], m) for n, m in pruner.masks().items())


# --------------------------------------------------------------------------------------
# GraNet
# --------------------------------------------------------------------------------------
def test_granet_follows_schedule_with_regrowth():
    model = mlp((6, 16, 16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = GraNetPruner(model, opt, sparsity=0.8, end_step=8, frequency=2, alpha=0.3,
                          allocation="uniform", sparse_from=None)
    numels = {"0": 96, "2": 256, "4": 48}
    hand = {0: 0.0, 2: 0.8 - 0.8 * 0.75 ** 3, 4: 0.8 - 0.8 / 8, 6: 0.8 - 0.8 / 64, 8: 0.8}
    regrown = 0
    for t, (x, y) in enumerate(batches(10), start=1):
        before = pruner.masks()
        train_step(model, opt, x, y)
        assert pruner.step() == (t in hand)
        masks = pruner.masks()
        s = hand[max(k for k in hand if k <= t)]
        for n, k in numels.items():
            assert nnz(masks[n]) == round((1 - s) * k), (t, n)
            grown = masks[n] & ~before[n]
            regrown += nnz(grown)
            assert (model.get_submodule(n).weight.detach()[grown] == 0).all()
            if t >= 8:  # no regrowth at end_step
                assert not grown.any()
    assert regrown > 0

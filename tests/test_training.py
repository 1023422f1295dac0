"""Training whole sparse models: every common optimizer against a dense masked reference,
gradient clipping, parameter groups, pattern changes with optimizer-state remapping,
autocast, eval / inference mode."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import sparseprop
from sparseprop import CSRPattern, SparseConv2d, SparseLinear
from sparseprop._sparse_module import SparseWeightModule


def _sparse_net(sparsity=0.8):
    """A small conv + MLP model, sparsified by magnitude (the head stays dense)."""
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 48), nn.ReLU(), nn.Linear(48, 24), nn.Tanh(), nn.Linear(24, 3))
    sparseprop.sparsify(net, sparsity, names=["0", "2", "5", "7"])
    return net


def _dense_twin(net):
    """The dense masked reference: densified copy plus each layer's mask (by name)."""
    dense = sparseprop.densify(net, inplace=False)
    masks = {name: m.pattern.mask().view(m.weight_shape) for name, m in net.named_modules()
             if isinstance(m, SparseWeightModule)}
    return dense, masks


def _data(n=16):
    g = torch.Generator().manual_seed(7)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def _step(model, opt, x, y, masks=None, clip=None):
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    if masks is not None:  # dense reference: pruned weights get no gradient
        for name, mask in masks.items():
            model.get_submodule(name).weight.grad.mul_(mask)
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.item()


def _assert_matches(net, dense, masks, atol=2e-5):
    for name, module in net.named_modules():
        twin = dense.get_submodule(name) if name else dense
        if isinstance(module, SparseWeightModule):
            w = module.weight.detach()
            assert torch.equal(w != 0, masks[name]) or not (w[~masks[name]]).any(), name
            torch.testing.assert_close(w, twin.weight.detach(), rtol=1e-4, atol=atol,
                                       msg=lambda m: f"{name}: {m}")
            if module.bias is not None:
                torch.testing.assert_close(module.bias.detach(), twin.bias.detach(), rtol=1e-4,
                                           atol=atol)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            torch.testing.assert_close(module.weight.detach(), twin.weight.detach(), rtol=1e-4,
                                       atol=atol)


OPTIMIZERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd-nesterov-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True,
                                                 weight_decay=1e-2),
    "adam-wd": lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=1e-2),
    "adamw-amsgrad": lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.1, amsgrad=True),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.05, weight_decay=1e-3),
    "rmsprop-centered": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True,
                                                      weight_decay=1e-3),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizers_keep_zeros_and_match_dense_masked(name):
    torch.manual_seed(0)
    net = _sparse_net()
    dense, masks = _dense_twin(net)
    make = OPTIMIZERS[name]
    opt, opt_d = make(net.parameters()), make(dense.parameters())
    x, y = _data()
    losses = [(_step(net, opt, x, y), _step(dense, opt_d, x, y, masks)) for _ in range(12)]
    assert losses[-1][0] < losses[0][0]
    for (ls, ld) in losses:
        assert abs(ls - ld) < 1e-4 * max(1.0, abs(ld))
    # the dense view keeps exactly the zero set it started with
    final = sparseprop.densify(net, inplace=False)
    for layer, mask in masks.items():
        w = final.get_submodule(layer).weight.detach()
        assert not w[~mask].any(), f"{name}: a pruned weight of {layer} became nonzero"
    _assert_matches(net, dense, masks)


def test_clipping_and_parameter_groups():
    """clip_grad_norm_ over sparse values and dense params; no weight decay on biases."""
    torch.manual_seed(0)
    net = _sparse_net()
    dense, masks = _dense_twin(net)

    def groups(model):
        decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
        no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
        return [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}]

    opt = torch.optim.AdamW(groups(net), lr=5e-3)
    opt_d = torch.optim.AdamW(groups(dense), lr=5e-3)
    assert any(p is net[5].values for p in opt.param_groups[0]["params"])
    x, y = _data()
    for _ in range(8):
        _step(net, opt, x, y, clip=0.05)
        _step(dense, opt_d, x, y, masks, clip=0.05)
    # clipping was active: the total norm before clipping exceeded the threshold
    net.zero_grad()
    nn.functional.cross_entropy(net(x), y).backward()
    assert torch.nn.utils.clip_grad_norm_(net.parameters(), 0.05) > 0.05
    _assert_matches(net, dense, masks)


# --------------------------------------------------------------------------------------
# pattern changes with optimizer state
# --------------------------------------------------------------------------------------
def _mlp():
    torch.manual_seed(3)
    return nn.Sequential(SparseLinear(12, 32, sparsity=0.7), nn.ReLU(),
                         SparseLinear(32, 16, sparsity=0.6), nn.ReLU(), nn.Linear(16, 4))


def _regrow_masks(net, generator):
    """RigL-like: drop the 25% smallest surviving weights of each sparse layer, grow as many
    random new positions."""
    masks = {}
    for name, m in net.named_modules():
        if not isinstance(m, SparseWeightModule):
            continue
        w = m.weight.detach()
        mask = m.pattern.mask()
        alive = mask.nonzero()
        n_swap = len(alive) // 4
        order = w[mask].abs().argsort()[:n_swap]
        new = mask.clone()
        new[tuple(alive[order].t())] = False
        dead = (~mask).nonzero()
        grow = dead[torch.randperm(len(dead), generator=generator)[:n_swap]]
        new[tuple(grow.t())] = True
        masks[name] = new
    return masks


def _mse_step(model, opt, x, y, masks=None):
    opt.zero_grad()
    (model(x) - y).pow(2).mean().backward()
    if masks is not None:
        for name, mask in masks.items():
            model.get_submodule(name).weight.grad.mul_(mask)
    opt.step()


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05, amsgrad=True),
], ids=["sgd-momentum", "adamw"])
def test_pattern_change_remaps_optimizer_state(make_opt):
    net = _mlp()
    dense, masks = _dense_twin(net)
    opt, opt_d = make_opt(net.parameters()), make_opt(dense.parameters())
    params_before = [id(p) for p in net.parameters()]
    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(32, 12, generator=g), torch.randn(32, 4, generator=g)
    for change in range(3):
        for _ in range(3):
            _mse_step(net, opt, x, y)
            _mse_step(dense, opt_d, x, y, masks)
        new_masks = _regrow_masks(net, g)
        old_state = {n: {k: v.clone() for k, v in opt.state[net.get_submodule(n).values].items()}
                     for n in new_masks}
        counts = sparseprop.apply_masks(net, new_masks, optimizer=opt)
        # the dense reference: weights and per-entry state of removed entries zeroed
        with torch.no_grad():
            for name, mask in new_masks.items():
                w = dense.get_submodule(name).weight
                w.mul_(mask)
                for key, value in opt_d.state[w].items():
                    if value.shape == w.shape:
                        value.mul_(mask)
        masks = new_masks
        for name, mask in new_masks.items():
            m = net.get_submodule(name)
            assert torch.equal(m.pattern.mask(), mask)
            c = counts[name]
            assert c["added"] == c["removed"] > 0 and c["kept"] + c["added"] == m.nnz
            state = opt.state[m.values]
            assert set(state) == set(old_state[name])
            for key, value in state.items():
                if key == "step":
                    assert torch.equal(value, old_state[name][key])
                else:
                    assert value.shape == (m.nnz,)
        _assert_matches(net, dense, masks)
    for _ in range(4):
        _mse_step(net, opt, x, y)
        _mse_step(dense, opt_d, x, y, masks)
    assert [id(p) for p in net.parameters()] == params_before
    _assert_matches(net, dense, masks)


def test_update_pattern_entries_values_grad_and_state():
    m = SparseLinear(6, 4, sparsity=0.5, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    m(torch.randn(3, 6)).sum().backward()
    opt.step()
    m(torch.randn(3, 6)).sum().backward()  # a pending gradient
    param = m.values
    w_old, grad_old = m.weight.detach().clone(), m.pattern.to_dense(param.grad).clone()
    avg_old = m.pattern.to_dense(opt.state[param]["exp_avg"]).clone()
    old_mask = m.pattern.mask()
    new_mask = old_mask.clone()
    new_mask[0] = ~new_mask[0]  # row 0 flips: its entries are removed / added
    init = torch.full((4, 6), 7.0)
    counts = sparseprop.update_pattern(m, new_mask, optimizer=opt, values=init)
    assert m.values is param
    kept, added = old_mask & new_mask, new_mask & ~old_mask
    assert counts == {"kept": int(kept.sum()), "removed": int((old_mask & ~new_mask).sum()),
                      "added": int(added.sum())}
    w = m.weight.detach()
    assert torch.equal(w[kept], w_old[kept]) and torch.all(w[added] == 7.0)
    assert not w[~new_mask].any()
    grad = m.pattern.to_dense(param.grad)
    assert torch.equal(grad[kept], grad_old[kept]) and not grad[added].any()
    avg = m.pattern.to_dense(opt.state[param]["exp_avg"])
    assert torch.equal(avg[kept], avg_old[kept]) and not avg[added].any()
    assert opt.state[param]["step"].item() == 1.0
    opt.step()  # the optimizer carries on with the remapped state
    # a CSRPattern works too; values may be a number or an aligned (nnz,) tensor
    pattern = CSRPattern.from_mask(old_mask)
    sparseprop.update_pattern(m, pattern, optimizer=opt, values=torch.arange(pattern.nnz) * 1.0)
    assert torch.equal(m.pattern.mask(), old_mask)
    # set_pattern with an optimizer remaps the state but takes all values as given
    m.set_pattern(CSRPattern.from_mask(new_mask), torch.ones(int(new_mask.sum())), optimizer=opt)
    assert torch.all(m.values == 1) and opt.state[param]["exp_avg"].shape == (m.nnz,)


def test_pattern_change_errors_change_nothing():
    net = _mlp()
    opt = torch.optim.SGD(net[0].parameters(), lr=0.1, momentum=0.9)
    before = copy.deepcopy(net.state_dict())
    good = net[0].pattern.mask()
    with pytest.raises(ValueError, match="optimizer does not train"):
        sparseprop.apply_masks(net, {"0": good, "2": net[2].pattern.mask()}, optimizer=opt)
    with pytest.raises(ValueError, match=r"mask has shape \(3, 3\)"):
        sparseprop.apply_masks(net, {"0": good, "2": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(ValueError, match="no module named 'nope'"):
        sparseprop.apply_masks(net, {"0": good, "nope": good})
    with pytest.raises(TypeError, match="not a sparse layer"):
        sparseprop.apply_masks(net, {"4": torch.ones(4, 16)})
    with pytest.raises(ValueError, match="optimizer does not train"):
        net[2].set_pattern(net[2].pattern, optimizer=opt)
    with pytest.raises(ValueError, match="values must be"):
        sparseprop.update_pattern(net[0], good, values=torch.ones(5))
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    # ".weight" names are accepted
    sparseprop.apply_masks(net, {"0.weight": good}, optimizer=opt)


def test_nnz_change_while_last_graph_is_alive():
    """The usual loop keeps last step's ``loss`` (and its graph) alive across a pattern
    change; a change of nnz must not trip autograd's cached accumulator of ``values``."""
    net = _mlp()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x, y = torch.randn(8, 12), torch.randn(8, 4)
    loss = None
    for step in range(5):
        if step in (2, 3):
            density = 0.5 if step == 2 else 0.1
            mask = torch.rand(32, 12, generator=torch.Generator().manual_seed(step)) < density
            sparseprop.apply_masks(net, {"0": mask}, optimizer=opt)
            assert net[0].nnz == int(mask.sum())
        opt.zero_grad()
        loss = (net(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        assert net[0].values.grad.shape == (net[0].nnz,)
        assert opt.state[net[0].values]["exp_avg"].shape == (net[0].nnz,)


def test_set_pattern_nnz_change_while_last_graph_is_alive():
    m = SparseLinear(16, 8, sparsity=0.5)
    loss = m(torch.randn(4, 16)).sum()
    loss.backward()
    m.set_pattern(CSRPattern.random(8, 16, 0.8))
    m(torch.randn(4, 16)).sum().backward()


# --------------------------------------------------------------------------------------
# autocast, eval, inference mode
# --------------------------------------------------------------------------------------
def test_autocast_sparse_then_dense():
    """Under autocast a sparse layer behaves like nn.Linear: computed in float32, result in
    bfloat16; the dense Linear after it runs in bfloat16 and gradients reach the values."""
    torch.manual_seed(0)
    net = nn.Sequential(SparseLinear(16, 32, sparsity=0.8), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = net[0](x)
        y = net(x)
    assert hidden.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert net[0].values.grad is not None and net[0].values.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), net(x), rtol=0.05, atol=0.05)


def test_autocast_bf16_input_to_sparse_layer():
    """A bfloat16 activation (the output of an autocast Linear/Conv2d) reaching a sparse
    layer is computed in float32 and returned in bfloat16, as nn.Linear/nn.Conv2d would."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), SparseLinear(32, 4, sparsity=0.8))
    x = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), net(x), rtol=0.05, atol=0.05)
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), SparseConv2d(4, 4, 3, sparsity=0.8))
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), conv(x), rtol=0.05, atol=0.05)


def test_eval_no_grad_and_inference_mode():
    torch.manual_seed(0)
    net = nn.Sequential(SparseConv2d(3, 8, 3, padding=1, sparsity=0.8), nn.BatchNorm2d(8),
                        nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
                        SparseLinear(8 * 64, 10, sparsity=0.9))
    x = torch.randn(4, 3, 8, 8)
    net.train()
    net(x).sum().backward()
    net.eval()
    with torch.no_grad():
        y1 = net(x)
    with torch.inference_mode():
        y2 = net(x)
        assert y2.is_inference()
    y3 = net(x)
    assert torch.equal(y1, y2) and torch.equal(y1, y3.detach())
    assert y3.requires_grad


def test_training_after_inference_mode():
    """Buffers the sparse layers pool during inference_mode must not come back as inference
    tensors in training (regression: 'Inference tensors cannot be saved for backward')."""
    m = SparseLinear(7, 4, sparsity=0.5)
    conv = SparseConv2d(3, 4, 3, sparsity=0.5)
    sparseprop._workspace.empty_cache()  # no pooled buffers from earlier tests
    with torch.inference_mode():
        m(torch.randn(3, 7))
        conv(torch.randn(2, 3, 5, 5))
    m(torch.randn(3, 7)).sum().backward()
    conv(torch.randn(2, 3, 5, 5)).sum().backward()
    assert m.values.grad is not None and conv.values.grad is not None


def test_construct_under_inference_mode():
    with torch.inference_mode():
        m = SparseLinear(8, 4, sparsity=0.5)
        m(torch.randn(2, 8))

"""Soak test: a small sparse model trained with Adam for thousands of steps on random
batch sizes and sequence lengths, with periodic prune/regrow pattern changes
(sparseprop.apply_masks with the optimizer) and checkpoint round trips into a freshly
built model and optimizer. Every step's loss must match a dense masked twin trained
alongside, and RSS must stay within a bound after warm-up.

Adam's first steps on a regrown entry (zero state) are sign-like, so float-rounding
differences between the sparse and dense gradients grow after many pattern changes;
the twin is therefore re-synchronized (weights and Adam state) from the reloaded
checkpoint every ``checkpoint_every`` steps, which also checks that the checkpoint
holds what the twin would have.

The default run (CI) is short; the long one is marked ``slow``
(``python -m pytest -m slow tests/test_soak.py``).
"""
from __future__ import annotations

import gc
import io
import os
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparseprop
from sparseprop import SparseLinear
from conftest import UNDER_ASAN

MB = 2**20
SIZES = [(16, 48, 0.7), (48, 48, 0.8), (48, 8, 0.5)]  # (in, out, sparsity) per layer
SPARSE_LAYERS = ("0", "2", "4")


def _rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sparse_model(seed: int) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    (a, b, sa), (_, c, sb), (_, d, sc) = SIZES
    return nn.Sequential(SparseLinear(a, b, sparsity=sa, generator=g), nn.ReLU(),
                         SparseLinear(b, c, sparsity=sb, generator=g), nn.ReLU(),
                         SparseLinear(c, d, sparsity=sc, generator=g))


class DenseTwin:
    """nn.Linear layers holding the sparse layers' dense weights, trained by Adam with
    gradients and optimizer state kept at zero off the masks: what the sparse model
    computes, in dense arithmetic."""

    def __init__(self, sparse: nn.Sequential, lr: float) -> None:
        self.model = nn.Sequential(*[m.to_dense() if isinstance(m, SparseLinear) else nn.ReLU()
                                     for m in sparse])
        self.masks = {n: sparse.get_submodule(n).pattern.mask() for n in SPARSE_LAYERS}
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)

    def sync(self, sparse: nn.Sequential, opt: torch.optim.Optimizer) -> None:
        """Take the sparse model's weights and Adam state (dense, zeros off the masks)."""
        for name, module in self.model.named_children():
            if not isinstance(module, nn.Linear):
                continue
            layer = sparse.get_submodule(name)
            with torch.no_grad():
                module.weight.copy_(layer.weight)
                module.bias.copy_(layer.bias)
            self.masks[name] = layer.pattern.mask()
            for mine, theirs, densify in ((module.weight, layer.values, layer.pattern.to_dense),
                                          (module.bias, layer.bias, lambda t: t)):
                self.opt.state[mine] = {k: densify(v).clone() if k != "step" else v.clone()
                                        for k, v in opt.state[theirs].items()}

    def step(self, x: torch.Tensor, target: torch.Tensor) -> float:
        self.opt.zero_grad()
        loss = F.mse_loss(self.model(x), target)
        loss.backward()
        for name, mask in self.masks.items():
            self.model.get_submodule(name).weight.grad.mul_(mask)
        self.opt.step()
        return loss.item()

    def apply_masks(self, masks) -> None:
        """update_pattern's rule: survivors keep value and state, new entries start at 0."""
        for name, mask in masks.items():
            weight = self.model.get_submodule(name).weight
            with torch.no_grad():
                weight.mul_(mask)
            for value in self.opt.state.get(weight, {}).values():
                if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                    value.mul_(mask)
            self.masks[name] = mask.clone()


def _new_masks(model: nn.Sequential, rng: random.Random, g: torch.Generator):
    """Prune the smallest-magnitude fifth of each layer's weights and regrow at random
    positions, sometimes to a different density (a new nnz)."""
    masks = {}
    for name in SPARSE_LAYERS:
        layer = model.get_submodule(name)
        weight = layer.weight.detach()
        mask = layer.pattern.mask()
        nnz = int(mask.sum())
        target = max(1, int(nnz * rng.choice([0.9, 1.0, 1.0, 1.1])))
        target = min(target, mask.numel())
        keep = max(0, min(nnz - nnz // 5, target))
        scores = weight.abs().masked_fill(~mask, -1.0).flatten()
        new = torch.zeros(mask.numel(), dtype=torch.bool)
        if keep:
            new[torch.topk(scores, keep).indices] = True
        free = (~new).nonzero().flatten()
        grow = free[torch.randperm(free.numel(), generator=g)[: target - keep]]
        new[grow] = True
        masks[name] = new.view_as(mask)
    return masks


def _checkpoint_round_trip(model, opt, lr: float, seed: int):
    """Save model and optimizer, load both into a freshly built model and optimizer
    (another pattern, another nnz), alternating the loading paths."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    fresh = _sparse_model(seed)
    if seed % 2:
        sparseprop.safe_load_state_dict(fresh, saved["model"])
    else:
        fresh.load_state_dict(saved["model"])
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=lr)
    fresh_opt.load_state_dict(saved["opt"])
    return fresh, fresh_opt


def soak(steps: int, seed: int = 0, change_every: int = 50, checkpoint_every: int = 100,
         warmup: int = 300, lr: float = 1e-3) -> dict:
    torch.manual_seed(seed)
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    model = _sparse_model(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    twin = DenseTwin(model, lr)
    worst, rss_after_warmup, rss_peak = 0.0, None, 0
    for step in range(1, steps + 1):
        batch, length = rng.randint(1, 32), rng.randint(1, 24)
        x = torch.randn(batch, length, SIZES[0][0])
        target = torch.randn(batch, length, SIZES[-1][1])
        opt.zero_grad()
        loss = F.mse_loss(model(x), target)
        loss.backward()
        opt.step()
        expected = twin.step(x, target)
        worst = max(worst, abs(loss.item() - expected) / max(abs(expected), 1e-6))
        assert worst < 1e-4, f"step {step}: loss {loss.item()} vs dense twin {expected}"
        if step % change_every == 0:
            masks = _new_masks(model, rng, g)
            sparseprop.apply_masks(model, masks, optimizer=opt)
            twin.apply_masks(masks)
        if step % checkpoint_every == 0:
            model, opt = _checkpoint_round_trip(model, opt, lr, seed + step)
            twin.sync(model, opt)
        if step == warmup:
            rss_after_warmup = _rss()
        elif step > warmup and step % 100 == 0:
            rss_peak = max(rss_peak, _rss())
    return {"worst_rel_loss_diff": worst, "rss_growth": rss_peak - rss_after_warmup}


def test_soak_short():
    """CI variant: 3000 steps, 60 pattern changes, 30 checkpoint round trips."""
    result = soak(steps=3000)
    assert UNDER_ASAN or result["rss_growth"] < 8 * MB, result


@pytest.mark.slow
def test_soak_long():
    """20000 steps, 400 pattern changes, 200 checkpoint round trips."""
    result = soak(steps=20000, seed=1, warmup=1000)
    assert result["rss_growth"] < 8 * MB, result

"""Helpers shared by the pruning tests (tests/test_pruning_*.py): tiny models, data, a
training step, and checks on the optimizer. Fixtures live in conftest.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sparseprop import SparseLinear


def mlp(sizes=(6, 16, 16, 3), seed=0, bn=False) -> nn.Sequential:
    """Linear / [BatchNorm1d] / ReLU stack; the Linear layers are named '0', '2', ... (no
    BN) or '0', '3', ... (with BN)."""
    torch.manual_seed(seed)
    mods = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            if bn:
                mods.append(nn.BatchNorm1d(b))
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def linear_names(model):
    return [n for n, m in model.named_children() if isinstance(m, (nn.Linear, SparseLinear))]


def batches(n_steps, n=16, d_in=6, n_cls=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, d_in, generator=g), torch.randint(0, n_cls, (n,), generator=g))
            for _ in range(n_steps)]


def train_step(model, opt, x, y) -> float:
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def dense_weight(module) -> torch.Tensor:
    return module.weight.detach().clone()


def nnz(mask) -> int:
    return int(mask.sum())


def opt_params(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def assert_optimizer_trains(model, opt):
    """The optimizer trains exactly the model's current parameters (same objects)."""
    assert {id(p) for p in opt_params(opt)} == {id(p) for p in model.parameters()}
    assert len(opt_params(opt)) == len(list(model.parameters()))


def erk_raw(k):
    n_out, n_in, kh, kw = k
    return (n_in + n_out + kh + kw) / (n_in * n_out * kh * kw)

"""Pruning from dense, end to end: ResNet-18 trained with gradual magnitude pruning
(``sparseprop.pruning.GradualMagnitudePruner`` as it is) against the same number of
plain dense steps, both on one fixed synthetic batch, wall time of the whole run.

The pruned run's masks rise on GMP's cubic schedule to ``final_sparsity`` by
``end_fraction`` of the steps (the stem ``conv1`` and ``fc`` stay dense, as in the
step bench); layers switch to ``SparseConv2d`` at the pruner's ``sparse_from``
(default 0.7), so early steps are masked-dense and the later ones sparse. The
figure users see is the ratio of the two whole runs, pruning overhead included.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._tables import Table

from ..pruning import GradualMagnitudePruner


@dataclass
class GMPRun:
    steps: int
    batch: int
    final_sparsity: float
    dense_s: float       # whole dense run
    pruned_s: float      # whole GMP run, mask updates and layer swaps included
    reached: float       # the pruner's overall sparsity at the end
    dense_loss: float    # last step's loss of each run (same data, so comparable)
    pruned_loss: float

    @property
    def speedup(self) -> float:
        return self.dense_s / self.pruned_s if self.pruned_s > 0 else float("nan")


def gmp_vs_dense(base: nn.Module, steps: int, batch: int, final_sparsity: float = 0.9,
                 end_fraction: float = 0.5, frequency: int = 0, lr: float = 0.01,
                 seed: int = 0) -> GMPRun:
    """Time ``steps`` SGD steps of a copy of ``base`` dense and another copy under GMP
    (dense run first; ``base`` itself is not changed). ``frequency`` 0: about 10 mask
    updates over the ramp of ``end_fraction * steps`` steps."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not 0.0 < final_sparsity < 1.0:
        raise ValueError(f"final_sparsity must be in (0, 1), got {final_sparsity}")
    if not 0.0 < end_fraction <= 1.0:
        raise ValueError(f"end_fraction must be in (0, 1], got {end_fraction}")
    end_step = max(1, int(steps * end_fraction))
    # Default: about 10 mask updates over the ramp (each ranks every weight).
    if frequency < 0:
        raise ValueError(f"frequency must be >= 0, got {frequency}")
    frequency = frequency or max(1, end_step // 10)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    target = torch.randint(0, 10, (batch,), generator=gen)

    def run(model: nn.Module, prune: bool):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        t0 = time.perf_counter()
        pruner = None
        if prune:  # built inside the timed region: its tick 0 is part of the run
            pruner = GradualMagnitudePruner(model, opt, sparsity=final_sparsity,
                                            end_step=end_step, frequency=frequency,
                                            exclude=r"conv1|fc")
        loss = torch.zeros(())
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), target)
            loss.backward()
            loss = loss.detach()
            opt.step()
            if pruner is not None:
                pruner.step()
        elapsed = time.perf_counter() - t0
        return elapsed, (pruner.sparsity() if pruner is not None else 0.0), float(loss)

    dense_s, _, dense_loss = run(copy.deepcopy(base), False)
    pruned_s, reached, pruned_loss = run(copy.deepcopy(base), True)
    return GMPRun(steps, batch, final_sparsity, dense_s, pruned_s, reached, dense_loss, pruned_loss)


GMP_COLUMNS = ("steps", "batch", "final sparsity", "reached", "dense run s", "GMP run s",
               "end-to-end x", "dense loss", "GMP loss")
GMP_TABLE = Table(GMP_COLUMNS, "l" + "r" * (len(GMP_COLUMNS) - 1),
                  [max(len(c), 7) for c in GMP_COLUMNS])


def gmp_cells(r: GMPRun):
    return [str(r.steps), str(r.batch), f"{r.final_sparsity:g}", f"{r.reached:.3f}",
            f"{r.dense_s:.1f}", f"{r.pruned_s:.1f}", f"{r.speedup:.2f}", f"{r.dense_loss:.3f}",
            f"{r.pruned_loss:.3f}"]

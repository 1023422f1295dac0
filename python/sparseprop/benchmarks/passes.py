"""Forward, backward and forward+backward of a dense layer and its sparse twin, timed
with the package's one timer (:mod:`sparseprop._timing`: interleaved, after warm-up,
medians), and the speedups of a result row."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

from .._timing import medians_ms, pass_items, time_interleaved_samples


def time_passes(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, grad: torch.Tensor, *,
                reps: Optional[int], warmup: int, target_time: float, min_reps: int = 5,
                max_reps: int = 50) -> Tuple[List[int], List[float]]:
    """([timed repetitions of fwd, bwd, fwd+bwd], [dense fwd, sparse fwd, dense bwd,
    sparse bwd, dense fwd+bwd, sparse fwd+bwd] median ms). Each pass is timed on its
    own, dense and sparse interleaved."""
    dense_items, sparse_items = pass_items(dense, x, grad), pass_items(sparse, x, grad)
    counts: List[int] = []
    medians: List[float] = []
    for dense_item, sparse_item in zip(dense_items, sparse_items):
        s = time_interleaved_samples([dense_item, sparse_item], reps, warmup, min_reps=min_reps,
                                     max_reps=max_reps, target_time=target_time)
        counts.append(len(s[0]))
        medians += medians_ms(s)
    return counts, medians


def ratio(a: float, b: float) -> float:
    """a / b; inf for a zero time, nan when either was not measured (nan)."""
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    return a / b if b > 0 else float("inf")


class PassRatios:
    """Speedups (dense / sparse) of a result row with dense_/sparse_{fwd,bwd,fwdbwd}_ms fields."""

    @property
    def fwd_x(self) -> float:
        return ratio(self.dense_fwd_ms, self.sparse_fwd_ms)

    @property
    def bwd_x(self) -> float:
        return ratio(self.dense_bwd_ms, self.sparse_bwd_ms)

    @property
    def fwdbwd_x(self) -> float:
        return ratio(self.dense_fwdbwd_ms, self.sparse_fwdbwd_ms)

    def speedups(self) -> dict:
        """The three speedups under their CSV column names."""
        return dict(fwd_speedup=self.fwd_x, bwd_speedup=self.bwd_x, fwdbwd_speedup=self.fwdbwd_x)

"""Per-call overhead: a small SparseLinear against nn.Linear at batch 1, forward+backward.

At 64x64 the kernels do almost no work, so the ratio measures what surrounds them
(checks, allocations, autograd, the Python path). Dense and sparse steps alternate in
blocks within one process; the result is the median block time per step of each.
"""
from __future__ import annotations

import statistics
import time
from typing import Dict

import torch

import sparseprop


def _step(module, x):
    module(x).sum().backward()


def _block(module, x, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        _step(module, x)
    return (time.perf_counter() - start) / steps


def measure(size: int = 64, batch: int = 1, sparsity: float = 0.9, rounds: int = 9,
            steps: int = 500, seed: int = 0) -> Dict[str, float]:
    """Median microseconds per forward+backward step of nn.Linear(size, size) and its
    SparseLinear twin (same masked weights, input requiring grad), and their ratio."""
    gen = torch.Generator().manual_seed(seed)
    sparse = sparseprop.SparseLinear(size, size, sparsity=sparsity, generator=gen)
    dense = sparse.to_dense()
    x = torch.randn(batch, size, generator=gen).requires_grad_()
    for module in (dense, sparse):  # warm-up: allocator, autograd, thread pool
        _block(module, x, steps // 5 + 1)
    dense_t, sparse_t = [], []
    for _ in range(rounds):
        dense_t.append(_block(dense, x, steps))
        sparse_t.append(_block(sparse, x, steps))
    d, s = statistics.median(dense_t) * 1e6, statistics.median(sparse_t) * 1e6
    return {"size": size, "batch": batch, "sparsity": sparsity, "dense_us": d, "sparse_us": s,
            "ratio": s / d}


def overhead_line(**kwargs) -> str:
    r = measure(**kwargs)
    return (f"per-call overhead: {r['size']}x{r['size']} batch {r['batch']} sparsity "
            f"{r['sparsity']:g}, forward+backward: nn.Linear {r['dense_us']:.1f} us, "
            f"SparseLinear {r['sparse_us']:.1f} us, sparse/dense {r['ratio']:.2f}x "
            f"(isa {sparseprop.get_isa()}, {sparseprop.get_num_threads()} sparseprop / "
            f"{torch.get_num_threads()} torch threads)")

"""Per-call overhead: a small SparseLinear against nn.Linear at batch 1, forward+backward
(``python -m sparseprop.bench --overhead``).

At 64x64 the kernels do almost no work, so the ratio measures what surrounds them
(checks, allocations, autograd, the Python path). One timed item is a block of
``steps`` steps of one layer; dense and sparse blocks are timed interleaved with the
package's one timer (alternating which goes first, one warm-up block each), and the
result is the median block time per step of each.
"""
from __future__ import annotations

from typing import Dict

import torch

import sparseprop
from .._timing import time_interleaved


def _block(module, x, steps: int) -> None:
    for _ in range(steps):
        module(x).sum().backward()


def measure(size: int = 64, batch: int = 1, sparsity: float = 0.9, rounds: int = 9,
            steps: int = 500, seed: int = 0) -> Dict[str, float]:
    """Median microseconds per forward+backward step of nn.Linear(size, size) and its
    SparseLinear twin (same masked weights, input requiring grad), and their ratio."""
    if rounds < 1 or steps < 1:
        raise ValueError(f"rounds and steps must be >= 1, got rounds={rounds}, steps={steps}")
    gen = torch.Generator().manual_seed(seed)
    sparse = sparseprop.SparseLinear(size, size, sparsity=sparsity, generator=gen)
    dense = sparse.to_dense()
    x = torch.randn(batch, size, generator=gen).requires_grad_()
    d, s = (t / steps * 1e6 for t in time_interleaved(
        [lambda: _block(dense, x, steps), lambda: _block(sparse, x, steps)], reps=rounds, warmup=1))
    return {"size": size, "batch": batch, "sparsity": sparsity, "dense_us": d, "sparse_us": s,
            "ratio": s / d}


def overhead_line(**kwargs) -> str:
    r = measure(**kwargs)
    return (f"per-call overhead: {r['size']}x{r['size']} batch {r['batch']} sparsity "
            f"{r['sparsity']:g}, forward+backward: nn.Linear {r['dense_us']:.1f} us, "
            f"SparseLinear {r['sparse_us']:.1f} us, sparse/dense {r['ratio']:.2f}x "
            f"(isa {sparseprop.get_isa()}, {sparseprop.get_num_threads()} sparseprop / "
            f"{torch.get_num_threads()} torch threads)")

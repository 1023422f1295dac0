"""Dense ``nn.Conv2d`` vs ``SparseConv2d`` per layer (``python -m sparseprop.bench --conv``).

The same method as the linear table (:mod:`.linear`). For every (layer, batch,
sparsity) a random ``SparseConv2d`` (no bias, as in ResNets and MobileNets, where a
BatchNorm follows) is built, and its dense twin is ``m.to_dense()``: an ``nn.Conv2d``
holding the same masked weights. The input requires grad (a middle layer: the input
gradient is computed), the weight/values gradients are computed too and reset before
every repetition. Forward, backward (forward untimed) and forward+backward are timed
*interleaved* (dense and sparse back to back, alternating which goes first), after
warm-up; the figures are medians. Before timing, outputs, input gradients and weight
gradients (at the pattern's positions) are compared.
"""
from __future__ import annotations

import gc
import itertools
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import List, Optional

import torch
from torch import nn

import sparseprop
from sparseprop import SparseConv2d
from .._tables import Table, fmt_ms, fmt_x
from ..conv import set_layout
from .checks import max_rel_error
from .conv_layers import ConvLayer
from .output import print_header, write_rows_csv
from .passes import PassRatios, time_passes


@dataclass
class ConvResult(PassRatios):
    layer: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    groups: int
    size: int
    batch: int
    sparsity: float
    nnz: int
    layout: str
    threads: int
    isa: str
    reps_fwd: int
    reps_bwd: int
    reps_fwdbwd: int
    dense_fwd_ms: float
    sparse_fwd_ms: float
    dense_bwd_ms: float
    sparse_bwd_ms: float
    dense_fwdbwd_ms: float
    sparse_fwdbwd_ms: float
    max_rel_err: float

    def row(self) -> dict:
        return {**asdict(self), **self.speedups()}


# ----------------------------------------------------------------------------------------
# The layer's index plans. SparseConv2d has no public accessor for them, so the
# benchmark reads its private plan cache here and nowhere else (which layout a plan
# was built for, keyed (layout, batch, ...); cleared so one layout's plans are timed
# at a time). Replace with a public accessor once the conv code offers one.
# ----------------------------------------------------------------------------------------
def _plan_cache(sparse: SparseConv2d):
    return sparse._plans


def layout_used(sparse: SparseConv2d, batch: int) -> str:
    """The data layout ("batch" or "width") of the index plan ``sparse`` built for ``batch``."""
    return next((key[0] for key in _plan_cache(sparse) if key[1] == batch), "?")


def drop_plans(sparse: SparseConv2d) -> None:
    """Forget the layer's index plans (they are rebuilt at the next call)."""
    _plan_cache(sparse).clear()


# ----------------------------------------------------------------------------------------
# one configuration
# ----------------------------------------------------------------------------------------
def bench_conv_config(layer: ConvLayer, sparse: SparseConv2d, dense: nn.Conv2d, batch: int, *,
                      reps: Optional[int], warmup: int, target_time: float, min_reps: int = 5,
                      max_reps: int = 50, seed: int = 0, check: bool = True) -> ConvResult:
    """Time forward, backward and forward+backward of ``dense`` and ``sparse`` at ``batch``."""
    gen = torch.Generator().manual_seed(seed + 7919 * batch)
    x = torch.randn(batch, layer.in_channels, layer.size, layer.size,
                    generator=gen).requires_grad_(True)
    grad = torch.randn(batch, layer.out_channels, layer.out_size, layer.out_size, generator=gen)

    err = max_rel_error(dense, sparse, x, grad) if check else float("nan")
    counts, medians = time_passes(dense, sparse, x, grad, reps=reps, warmup=warmup,
                                  target_time=target_time, min_reps=min_reps, max_reps=max_reps)
    return ConvResult(layer.label, layer.in_channels, layer.out_channels, layer.kernel, layer.stride,
                      layer.groups, layer.size, batch, sparse.sparsity, sparse.nnz,
                      layout_used(sparse, batch), sparseprop.get_num_threads(), sparseprop.get_isa(),
                      *counts, *medians, err)


TABLE = Table(["layer", "batch", "sparsity", "layout", "dense fwd ms", "sparse fwd ms", "fwd x",
               "dense bwd ms", "sparse bwd ms", "bwd x", "dense f+b ms", "sparse f+b ms",
               "fwd+bwd x"], "l" + "r" * 12,
              [18, 5, 8, 6, 12, 13, 6, 12, 13, 6, 12, 13, 9])


def cells(r: ConvResult) -> List[str]:
    return [r.layer, str(r.batch), f"{r.sparsity:g}", r.layout, fmt_ms(r.dense_fwd_ms),
            fmt_ms(r.sparse_fwd_ms), fmt_x(r.fwd_x), fmt_ms(r.dense_bwd_ms), fmt_ms(r.sparse_bwd_ms),
            fmt_x(r.bwd_x), fmt_ms(r.dense_fwdbwd_ms), fmt_ms(r.sparse_fwdbwd_ms), fmt_x(r.fwdbwd_x)]


# ----------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------
def run_table(args, layers, batches, sparsities, reps, warmup) -> int:
    """Every (layer, batch, sparsity, ``args.layout``), row by row, then the markdown
    table and CSV that ``args`` asks for."""
    out = sys.stdout
    progress = sys.stderr if args.markdown else sys.stdout
    print_header(out, args.markdown, table_header=TABLE.header())

    results: List[ConvResult] = []
    start = time.perf_counter()
    for layer in layers:
        built = {}  # one pattern per (layer, sparsity), reused for every batch size
        for batch, sparsity, layout in itertools.product(batches, sparsities, args.layout):
            if sparsity not in built:
                sparse = layer.make(sparsity, torch.Generator().manual_seed(args.seed))
                built[sparsity] = (sparse, sparse.to_dense())
            sparse, dense = built[sparsity]
            previous = set_layout(layout)
            drop_plans(sparse)  # plans are per layout: keep only this one's
            try:
                r = bench_conv_config(layer, sparse, dense, batch, reps=reps, warmup=warmup,
                                      target_time=args.min_time, seed=args.seed,
                                      check=not args.no_check)
            finally:
                set_layout(previous)
            r.sparsity = sparsity  # as asked for; the exact value is 1 - nnz / numel
            results.append(r)
            if not args.no_check and not (r.max_rel_err <= 1e-4):
                print(f"WARNING: {layer.label} batch {batch} sparsity {sparsity:g}: dense and "
                      f"sparse differ by {r.max_rel_err:.3g} (relative; outputs, input or "
                      f"weight gradients)", file=sys.stderr)
            prefix = f"[{len(results)}] " if args.markdown else ""
            print(prefix + TABLE.row(cells(r)), file=progress)
            progress.flush()
        del built
        gc.collect()
    elapsed = time.perf_counter() - start

    if args.markdown:
        print(TABLE.markdown([cells(r) for r in results]), file=out)
    print(f"\n{len(results)} configuration(s) in {elapsed:.1f} s",
          file=sys.stderr if args.markdown else out)
    if args.csv:
        write_rows_csv(args.csv, [r.row() for r in results], [f.name for f in fields(ConvResult)])
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0

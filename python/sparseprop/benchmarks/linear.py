"""Dense ``nn.Linear`` vs ``SparseLinear``: forward, backward and forward+backward times
(``python -m sparseprop.bench``).

Method. For every (shape, batch, sparsity) a random ``SparseLinear`` is built and
its dense twin is ``m.to_dense()`` (same masked weights, same bias). Both run in the
same process on the same input, which requires grad (so the input gradient is
computed, as for a middle layer); the weight/values and bias gradients are computed
too and reset (``.grad = None``) before every repetition. The two sides are timed
*interleaved*: each repetition runs dense and sparse back to back, alternating
which goes first, so slow drifts of the machine (clock, other load) hit both
alike. After warm-up the reported figure is the *median* over repetitions of
``time.perf_counter`` differences (:mod:`sparseprop._timing`).

* forward: ``y = m(x)`` (with autograd recording, as in training);
* backward: the forward runs untimed, then ``y.backward(grad)`` is timed;
* forward+backward: both in one timed region.

Speedups are dense time / sparse time: above 1 means the sparse layer is faster.
"""
from __future__ import annotations

import gc
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

import sparseprop
from .._backend import cpu_model
from .._tables import Table, fmt_ms, fmt_x
from .checks import max_abs_error
from .output import print_header, write_rows_csv
from .passes import PassRatios, time_passes
from .plot import import_matplotlib, write_plot


@dataclass
class Result(PassRatios):
    in_features: int
    out_features: int
    batch: int
    sparsity: float
    nnz: int
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
    max_abs_err: float

    @property
    def shape(self) -> str:
        return f"{self.in_features}x{self.out_features}"

    def row(self) -> dict:
        return {**asdict(self), **self.speedups()}


def make_layers(in_features: int, out_features: int, sparsity: float, seed: int = 0,
                storage: torch.dtype = torch.float32) -> Tuple[sparseprop.SparseLinear, nn.Linear]:
    """A random ``SparseLinear`` (with bias) storing its weights as ``storage``, and its
    float32 dense twin (the same weights: ``m.to_dense().float()``)."""
    gen = torch.Generator().manual_seed(seed)
    sparse = sparseprop.SparseLinear(in_features, out_features, bias=True, sparsity=sparsity,
                                     generator=gen, dtype=storage)
    return sparse, sparse.to_dense().float()


def bench_config(sparse: sparseprop.SparseLinear, dense: nn.Linear, batch: int, *,
                 reps: Optional[int], warmup: int, target_time: float, min_reps: int = 5,
                 max_reps: int = 50, seed: int = 0, check: bool = True) -> Result:
    """Time forward, backward and forward+backward of ``dense`` and ``sparse`` at ``batch``."""
    in_features, out_features = sparse.in_features, sparse.out_features
    gen = torch.Generator().manual_seed(seed + 7919 * batch)
    x = torch.randn(batch, in_features, generator=gen).requires_grad_(True)
    grad = torch.randn(batch, out_features, generator=gen)

    err = max_abs_error(dense, sparse, x, grad) if check else float("nan")
    counts, medians = time_passes(dense, sparse, x, grad, reps=reps, warmup=warmup,
                                  target_time=target_time, min_reps=min_reps, max_reps=max_reps)
    return Result(in_features, out_features, batch, sparse.sparsity, sparse.nnz,
                  sparseprop.get_num_threads(), sparseprop.get_isa(), *counts, *medians, err)


# ----------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------
TABLE = Table(["shape", "batch", "sparsity", "dense fwd ms", "sparse fwd ms", "fwd x",
               "dense bwd ms", "sparse bwd ms", "bwd x", "fwd+bwd x"], "r" * 10,
              [11, 5, 8, 12, 13, 6, 12, 13, 6, 9], markdown_align="l" + "r" * 9)
COLUMNS = TABLE.columns


def cells(r: Result) -> List[str]:
    return [r.shape, str(r.batch), f"{r.sparsity:g}", fmt_ms(r.dense_fwd_ms),
            fmt_ms(r.sparse_fwd_ms), fmt_x(r.fwd_x), fmt_ms(r.dense_bwd_ms),
            fmt_ms(r.sparse_bwd_ms), fmt_x(r.bwd_x), fmt_x(r.fwdbwd_x)]


def plain_header() -> str:
    return TABLE.header()


def plain_row(r: Result) -> str:
    return TABLE.row(cells(r))


def markdown_table(results: Sequence[Result]) -> str:
    return TABLE.markdown([cells(r) for r in results])


def write_csv(path: str, results: Sequence[Result]) -> None:
    write_rows_csv(path, [r.row() for r in results], [f.name for f in fields(Result)])


# ----------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------
def run_table(args, shapes, batches, sparsities, reps, warmup, threads) -> int:
    """Every (shape, batch, sparsity), printed row by row, then the markdown table, CSV
    and plot that ``args`` asks for (``markdown``, ``csv``, ``plot``, ``seed``,
    ``min_time``, ``no_check``)."""
    if args.plot:
        import_matplotlib()  # fail now, not after the whole run

    out = sys.stdout
    progress = sys.stderr if args.markdown else sys.stdout
    print_header(out, args.markdown, [f"storage:    sparse weights stored as {args.storage}"]
                 if args.storage != "float32" else [], table_header=plain_header())

    results: List[Result] = []
    start = time.perf_counter()
    for (fin, fout) in shapes:
        # Building a large random pattern takes seconds: build each layer once per
        # shape and reuse it for every batch size (freed before the next shape).
        layers = {}
        for batch in batches:
            for sparsity in sparsities:
                if sparsity not in layers:
                    layers[sparsity] = make_layers(fin, fout, sparsity, seed=args.seed,
                                                   storage=getattr(torch, args.storage))
                sparse, dense = layers[sparsity]
                r = bench_config(sparse, dense, batch, reps=reps, warmup=warmup,
                                 target_time=args.min_time, seed=args.seed, check=not args.no_check)
                r.sparsity = sparsity  # as asked for; the exact value is 1 - nnz / numel
                results.append(r)
                tol = 1e-4 * max(1.0, math.sqrt(fin))
                if not args.no_check and not (r.max_abs_err <= tol):
                    print(f"WARNING: {r.shape} batch {batch} sparsity {sparsity:g}: dense and sparse "
                          f"differ by {r.max_abs_err:.3g} (outputs or input gradients)", file=sys.stderr)
                prefix = f"[{len(results)}] " if args.markdown else ""
                print(prefix + plain_row(r), file=progress)
                progress.flush()
        del layers, sparse, dense
        gc.collect()
    elapsed = time.perf_counter() - start

    if args.markdown:
        print(markdown_table(results), file=out)
    print(f"\n{len(results)} configuration(s) in {elapsed:.1f} s", file=sys.stderr if args.markdown else out)
    if args.csv:
        write_csv(args.csv, results)
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.plot:
        title = f"{cpu_model()}, {sparseprop.get_isa()}, {threads} thread(s), torch {torch.__version__}"
        write_plot(args.plot, results, title)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0

"""Dense ``nn.Linear`` vs ``SparseLinear``: forward, backward and forward+backward times.

Run as ``python -m sparseprop.bench`` (or the ``sparseprop-bench`` console script);
``--help`` lists the options, ``--quick`` is a seconds-long smoke run.
``--conv`` (convolution layers) and ``--resnet18`` (a whole training step) run the
benchmarks of :mod:`sparseprop.bench_conv` instead; ``--conv --help`` and
``--resnet18 --help`` list their options.

Method. For every (shape, batch, sparsity) a random ``SparseLinear`` is built and
its dense twin is ``m.to_dense()`` (same masked weights, same bias). Both run in the
same process on the same input, which requires grad (so the input gradient is
computed, as for a middle layer); the weight/values and bias gradients are computed
too and reset (``.grad = None``) before every repetition. The two sides are timed
*interleaved*: each repetition runs dense and sparse back to back, alternating
which goes first, so slow drifts of the machine (clock, other load) hit both
alike. After warm-up the reported figure is the *median* over repetitions of
``time.perf_counter`` differences.

* forward: ``y = m(x)`` (with autograd recording, as in training);
* backward: the forward runs untimed, then ``y.backward(grad)`` is timed;
* forward+backward: both in one timed region.

Speedups are dense time / sparse time: above 1 means the sparse layer is faster.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

import sparseprop
from ._backend import cpu_model

DEFAULT_SHAPES = "768x3072,3072x768,1024x1024,4096x4096"
DEFAULT_BATCHES = "1,16,256"
DEFAULT_SPARSITIES = "0.5,0.8,0.9,0.95,0.98,0.99"
QUICK_SHAPES = "256x512,512x256"
QUICK_BATCHES = "1,16"
QUICK_SPARSITIES = "0.9,0.99"

# A timed item: a callable run in the timed region, or (setup, run) where
# ``setup()`` runs untimed just before and its result is passed to ``run``.
Timed = Union[Callable[[], object], Tuple[Callable[[], object], Callable[[object], object]]]


# ----------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------
def time_interleaved_samples(fns: Sequence[Timed], reps: Optional[int] = None, warmup: int = 2, *,
                             min_reps: int = 5, max_reps: int = 50,
                             target_time: float = 0.2) -> List[List[float]]:
    """Per-repetition times (seconds) of each item of ``fns``, measured interleaved.

    Every repetition runs each item once; the starting item rotates from one
    repetition to the next, so no item always runs first. ``warmup`` untimed
    repetitions come first. With ``reps`` given exactly that many repetitions are
    timed; with ``reps=None`` repetitions go on until the items have used
    ``target_time`` seconds each on average (i.e. ``target_time * len(fns)`` in
    all), at least ``min_reps`` and at most ``max_reps`` times. The cyclic garbage
    collector is paused while timing.
    """
    items = [f if isinstance(f, tuple) else (None, f) for f in fns]
    n = len(items)
    if n == 0:
        return []
    if reps is not None and reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    lo, hi = (reps, reps) if reps is not None else (max(1, min_reps), max(1, min_reps, max_reps))
    samples: List[List[float]] = [[] for _ in range(n)]
    budget = target_time * n
    spent = 0.0
    gc_was_enabled = gc.isenabled()
    gc.disable()  # no gc.collect() here: with torch loaded it takes ~0.1 s
    try:
        for rep in range(-warmup, hi):
            for k in range(n):
                i = (rep + k) % n
                setup, run = items[i]
                arg = setup() if setup is not None else None
                t0 = time.perf_counter()
                res = run(arg) if setup is not None else run()
                dt = time.perf_counter() - t0
                del arg, res  # freed outside the timed region
                if rep >= 0:
                    samples[i].append(dt)
                    spent += dt
            if rep + 1 >= lo and spent >= budget:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def time_interleaved(fns: Sequence[Timed], reps: Optional[int] = None, warmup: int = 2,
                     **kwargs) -> List[float]:
    """Median time (seconds) of each item of ``fns``; see :func:`time_interleaved_samples`."""
    return [statistics.median(s) for s in time_interleaved_samples(fns, reps, warmup, **kwargs)]


# ----------------------------------------------------------------------------------------
# one configuration
# ----------------------------------------------------------------------------------------
class PassRatios:
    """Speedups (dense / sparse) of a result row with dense_/sparse_{fwd,bwd,fwdbwd}_ms fields."""

    @property
    def fwd_x(self) -> float:
        return _ratio(self.dense_fwd_ms, self.sparse_fwd_ms)

    @property
    def bwd_x(self) -> float:
        return _ratio(self.dense_bwd_ms, self.sparse_bwd_ms)

    @property
    def fwdbwd_x(self) -> float:
        return _ratio(self.dense_fwdbwd_ms, self.sparse_fwdbwd_ms)


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
        d = asdict(self)
        d.update(fwd_speedup=self.fwd_x, bwd_speedup=self.bwd_x, fwdbwd_speedup=self.fwdbwd_x)
        return d


def _ratio(a: float, b: float) -> float:
    """a / b; inf for a zero time, nan when either was not measured (nan)."""
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    return a / b if b > 0 else float("inf")


def _params(module: nn.Module) -> List[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def _make_pass_fns(module: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    """(forward, backward, forward+backward) timed items for one layer."""
    params = _params(module)

    def zero():
        x.grad = None
        for p in params:
            p.grad = None

    def fwd():
        return module(x)  # the caller frees the output (and its graph) untimed

    def bwd_setup():
        zero()
        return module(x)

    def bwd(y):
        y.backward(grad, retain_graph=False)

    def fwdbwd_setup():
        zero()

    def fwdbwd(_):
        module(x).backward(grad, retain_graph=False)

    return fwd, (bwd_setup, bwd), (fwdbwd_setup, fwdbwd)


def _check(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    """Largest absolute difference of outputs and input gradients, dense vs sparse."""
    errs = []
    outs = []
    for m in (dense, sparse):
        x.grad = None
        y = m(x)
        y.backward(grad)
        outs.append((y.detach().clone(), x.grad.clone()))
    x.grad = None
    for m in (dense, sparse):
        for p in _params(m):
            p.grad = None
    (yd, gd), (ys, gs) = outs
    errs.append(float((yd - ys).abs().max()) if yd.numel() else 0.0)
    errs.append(float((gd - gs).abs().max()) if gd.numel() else 0.0)
    return max(errs)


def make_layers(in_features: int, out_features: int, sparsity: float,
                seed: int = 0) -> Tuple[sparseprop.SparseLinear, nn.Linear]:
    """A random ``SparseLinear`` (with bias) and its dense twin ``m.to_dense()``."""
    gen = torch.Generator().manual_seed(seed)
    sparse = sparseprop.SparseLinear(in_features, out_features, bias=True, sparsity=sparsity,
                                     generator=gen)
    return sparse, sparse.to_dense()


def bench_config(sparse: sparseprop.SparseLinear, dense: nn.Linear, batch: int, *,
                 reps: Optional[int], warmup: int, target_time: float, min_reps: int = 5,
                 max_reps: int = 50, seed: int = 0, check: bool = True) -> Result:
    """Time forward, backward and forward+backward of ``dense`` and ``sparse`` at ``batch``."""
    in_features, out_features = sparse.in_features, sparse.out_features
    gen = torch.Generator().manual_seed(seed + 7919 * batch)
    x = torch.randn(batch, in_features, generator=gen).requires_grad_(True)
    grad = torch.randn(batch, out_features, generator=gen)

    err = _check(dense, sparse, x, grad) if check else float("nan")

    dense_fns = _make_pass_fns(dense, x, grad)
    sparse_fns = _make_pass_fns(sparse, x, grad)
    medians, counts = [], []
    for which in range(3):  # forward, backward, forward+backward
        s = time_interleaved_samples([dense_fns[which], sparse_fns[which]], reps, warmup,
                                     min_reps=min_reps, max_reps=max_reps, target_time=target_time)
        medians.append([statistics.median(v) * 1e3 for v in s])
        counts.append(len(s[0]))
    return Result(in_features, out_features, batch, sparse.sparsity, sparse.nnz,
                  sparseprop.get_num_threads(), sparseprop.get_isa(), *counts,
                  medians[0][0], medians[0][1], medians[1][0], medians[1][1],
                  medians[2][0], medians[2][1], err)


# ----------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------
def header_lines() -> List[str]:
    cfg = sparseprop.config()
    return [
        f"CPU:        {cpu_model()} ({os.cpu_count()} logical CPUs, {platform.machine()})",
        f"ISA path:   {cfg['active_isa']} (available: {', '.join(cfg['available_isas'])})",
        f"threads:    {sparseprop.get_num_threads()} sparseprop, {torch.get_num_threads()} torch",
        f"torch:      {torch.__version__}",
        f"sparseprop: {sparseprop.__version__}",
    ] + ([f"load:       {_load_text()}"] if _load_text() else [])


def _load_text() -> str:
    try:
        one, five, _ = os.getloadavg()
    except (AttributeError, OSError):
        return ""
    text = f"{one:.2f} {five:.2f} (1 and 5 min load average before the run)"
    if one > 0.5:
        text += "  <- other work is running: timings will be noisy"
    return text


COLUMNS = ["shape", "batch", "sparsity", "dense fwd ms", "sparse fwd ms", "fwd x",
           "dense bwd ms", "sparse bwd ms", "bwd x", "fwd+bwd x"]


def _cells(r: Result) -> List[str]:
    return [r.shape, str(r.batch), f"{r.sparsity:g}", _ms(r.dense_fwd_ms), _ms(r.sparse_fwd_ms),
            _x(r.fwd_x), _ms(r.dense_bwd_ms), _ms(r.sparse_bwd_ms), _x(r.bwd_x), _x(r.fwdbwd_x)]


def _ms(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def _x(v: float) -> str:
    return f"{v:.2f}"


_WIDTHS = [11, 5, 8, 12, 13, 6, 12, 13, 6, 9]


def plain_header() -> str:
    return "  ".join(c.rjust(w) for c, w in zip(COLUMNS, _WIDTHS))


def plain_row(r: Result) -> str:
    return "  ".join(c.rjust(w) for c, w in zip(_cells(r), _WIDTHS))


def markdown_table(results: Sequence[Result]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(COLUMNS) - 1)) + "|"]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in results]
    return "\n".join(lines)


def write_csv(path: str, results: Sequence[Result]) -> None:
    rows = [r.row() for r in results]
    fields = list(rows[0].keys()) if rows else [f for f in Result.__dataclass_fields__]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _import_matplotlib():
    """matplotlib with the file-only Agg backend, or SystemExit with what to install."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib, which is not installed: "
                         "pip install matplotlib (or pip install 'sparseprop[bench]')") from None
    matplotlib.use("Agg")
    import matplotlib.ticker  # noqa: F401
    return matplotlib


def _sparsity_to_axis(s):
    import numpy as np
    return -np.log10(np.clip(1.0 - np.asarray(s, dtype=float), 1e-9, None))


def _axis_to_sparsity(a):
    import numpy as np
    return 1.0 - np.power(10.0, -np.asarray(a, dtype=float))


def write_plot(path: str, results: Sequence[Result], title: str) -> None:
    matplotlib = _import_matplotlib()
    import matplotlib.pyplot as plt
    shapes = list(dict.fromkeys(r.shape for r in results))
    batches = list(dict.fromkeys(r.batch for r in results))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for si, shape in enumerate(shapes):
        for bi, batch in enumerate(batches):
            pts = sorted((r.sparsity, r.fwdbwd_x) for r in results
                         if r.shape == shape and r.batch == batch)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[si % len(colors)],
                    linestyle=styles[bi % len(styles)], marker=markers[bi % len(markers)],
                    label=f"{shape}, batch {batch}")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    # Spread the high sparsities out: the axis is linear in -log10(density).
    ax.set_xscale("function", functions=(_sparsity_to_axis, _axis_to_sparsity))
    ax.set_xlabel("sparsity (log scale of density)")
    ax.set_ylabel("speedup, forward+backward (dense time / sparse time)")
    ax.set_yscale("log")
    ticker = matplotlib.ticker
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ticks = sorted({r.sparsity for r in results})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    a0, a1 = float(_sparsity_to_axis(ticks[0])), float(_sparsity_to_axis(ticks[-1]))
    pad = 0.05 * (a1 - a0) if a1 > a0 else 0.1
    ax.set_xlim(float(_axis_to_sparsity(a0 - pad)), float(_axis_to_sparsity(a1 + pad)))
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------
def _parse_shapes(text: str) -> List[Tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        parts = item.replace("->", "x").split("x")
        try:
            a, b = (int(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad shape {item!r}: expected IN x OUT, e.g. 1024x4096")
        if a < 1 or b < 1:
            raise argparse.ArgumentTypeError(f"bad shape {item!r}: sizes must be positive")
        shapes.append((a, b))
    if not shapes:
        raise argparse.ArgumentTypeError("no shapes given")
    return shapes


def _parse_list(kind, check, what):
    def parse(text: str):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {what} list {text!r}")
        bad = [v for v in values if not check(v)]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"bad {what} list {text!r}")
        return values
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sparseprop.bench",
        description="Time dense nn.Linear against sparseprop.SparseLinear (same masked "
                    "weights), forward, backward and forward+backward; interleaved, medians. "
                    "Speedup = dense time / sparse time.")
    p.add_argument("--shapes", type=_parse_shapes, default=None,
                   help=f"comma-separated INxOUT layer shapes (default {DEFAULT_SHAPES})")
    p.add_argument("--batch", type=_parse_list(int, lambda v: v >= 1, "batch"), default=None,
                   help=f"comma-separated batch sizes (default {DEFAULT_BATCHES})")
    p.add_argument("--sparsity", type=_parse_list(float, lambda v: 0.0 <= v < 1.0, "sparsity"),
                   default=None, help=f"comma-separated sparsities in [0, 1) (default {DEFAULT_SPARSITIES})")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for torch and sparseprop alike (default: torch.get_num_threads())")
    p.add_argument("--isa", default=None,
                   help="force a sparseprop kernel path (scalar, avx2, avx512, neon; default: best)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions per pass (default: adaptive, --min-time per side, 5..50)")
    p.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (default 2)")
    p.add_argument("--min-time", type=float, default=0.2,
                   help="adaptive repetitions: timed seconds per side and pass, on average over the "
                        "two sides (default 0.2; at least 5, at most 50 repetitions)")
    p.add_argument("--seed", type=int, default=0, help="seed for patterns, weights and inputs")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing dense and sparse outputs/gradients before timing")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: shapes {QUICK_SHAPES}, batch {QUICK_BATCHES}, sparsity "
                        f"{QUICK_SPARSITIES}, 3 reps, 1 warm-up (explicit flags still win)")
    p.add_argument("--csv", metavar="FILE", help="also write all results as CSV")
    p.add_argument("--plot", metavar="FILE", help="save fwd+bwd speedup vs sparsity (needs matplotlib)")
    p.add_argument("--markdown", action="store_true",
                   help="print a GitHub markdown table (progress goes to stderr)")
    p.add_argument("--overhead", action="store_true",
                   help="only the per-call overhead line: 64x64 SparseLinear vs nn.Linear at "
                        "batch 1, forward+backward time ratio (sparse / dense, lower is better)")
    modes = p.add_argument_group(
        "other benchmarks", "each takes its own options (batch, sparsity, threads, reps, "
        "markdown, csv, quick, ...); put --help after it to list them, e.g. "
        "'python -m sparseprop.bench --conv --help'")
    modes.add_argument("--conv", action="store_true",
                       help="dense nn.Conv2d vs SparseConv2d per layer: ResNet-18 (CIFAR) 3x3, "
                            "stride-2 3x3 and 1x1 shortcut layers, MobileNet depthwise/pointwise")
    modes.add_argument("--resnet18", action="store_true",
                       help="one SGD training step of a CIFAR ResNet-18, dense vs every conv but "
                            "the stem sparse, plus the share of the step spent outside convolutions")
    return p


def _split_mode(argv: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """('conv' | 'resnet18' | None, the other arguments); the flags must be spelled out."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--conv", action="store_true")
    pre.add_argument("--resnet18", action="store_true")
    mode, rest = pre.parse_known_args(list(argv))
    if mode.conv and mode.resnet18:
        raise SystemExit("python -m sparseprop.bench: error: --conv and --resnet18 are separate "
                         "runs; give one of them")
    return ("conv" if mode.conv else "resnet18" if mode.resnet18 else None), rest


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point: the linear table, or ``--conv`` / ``--resnet18``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    mode, rest = _split_mode(argv)
    if mode is not None:
        from . import bench_conv
        return bench_conv.main_conv(rest) if mode == "conv" else bench_conv.main_resnet18(rest)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.conv or args.resnet18:  # an abbreviation such as --con got here
        parser.error("spell out --conv / --resnet18 in full")

    shapes = args.shapes or _parse_shapes(QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    batches = args.batch or _parse_list(int, bool, "batch")(QUICK_BATCHES if args.quick else DEFAULT_BATCHES)
    sparsities = args.sparsity or _parse_list(float, bool, "sparsity")(
        QUICK_SPARSITIES if args.quick else DEFAULT_SPARSITIES)
    reps = args.reps if args.reps is not None else (3 if args.quick else None)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if reps is not None and reps < 1:
        parser.error("--reps must be >= 1")
    if warmup < 0:
        parser.error("--warmup must be >= 0")

    threads = args.threads if args.threads is not None else torch.get_num_threads()
    if threads < 1:
        parser.error("--threads must be >= 1")
    with run_settings(parser, threads, args.isa):
        if args.overhead:
            from .bench_overhead import overhead_line

            print("\n".join(header_lines()))
            print(overhead_line(sparsity=sparsities[0] if args.sparsity else 0.9,
                                steps=100 if args.quick else 500, rounds=3 if args.quick else 9))
            return 0
        return _run(args, parser, shapes, batches, sparsities, reps, warmup, threads)


@contextlib.contextmanager
def run_settings(parser: argparse.ArgumentParser, threads: int, isa: Optional[str]):
    """Use ``threads`` for torch and sparseprop alike and force ``isa`` (if given) inside
    the block; afterwards put the previous settings back (``main()`` may be called
    in-process: tests, notebooks). A bad ``isa`` is reported through ``parser.error``."""
    cfg = sparseprop.config()
    saved = (torch.get_num_threads(), None if cfg["threads_follow_torch"] else cfg["num_threads"],
             sparseprop.get_isa())
    try:
        torch.set_num_threads(threads)
        sparseprop.set_num_threads(threads)
        if isa:
            try:
                sparseprop.set_isa(isa)
            except (ValueError, RuntimeError) as err:
                parser.error(f"--isa {isa}: {err} (available: {', '.join(sparseprop.available_isas())})")
        yield
    finally:
        torch.set_num_threads(saved[0])
        sparseprop.set_num_threads(saved[1])
        if isa:
            best = sparseprop.available_isas()[-1]
            sparseprop.set_isa(None if saved[2] == best else saved[2])


def _run(args, parser, shapes, batches, sparsities, reps, warmup, threads) -> int:
    if args.plot:
        _import_matplotlib()  # fail now, not after the whole run

    out = sys.stdout
    progress = sys.stderr if args.markdown else sys.stdout
    head = header_lines()
    if args.markdown:
        print("\n".join(f"- {line}" for line in head), file=out)
        print(file=out)
    else:
        print("\n".join(head), file=out)
        print("times are medians in ms; x = dense time / sparse time (>1: sparse faster)\n", file=out)
        print(plain_header(), file=out)
    out.flush()

    results: List[Result] = []
    start = time.perf_counter()
    for (fin, fout) in shapes:
        # Building a large random pattern takes seconds: build each layer once per
        # shape and reuse it for every batch size (freed before the next shape).
        layers = {}
        for batch in batches:
            for sparsity in sparsities:
                if sparsity not in layers:
                    layers[sparsity] = make_layers(fin, fout, sparsity, seed=args.seed)
                sparse, dense = layers[sparsity]
                r = bench_config(sparse, dense, batch, reps=reps, warmup=warmup,
                                 target_time=args.min_time, seed=args.seed, check=not args.no_check)
                r.sparsity = sparsity  # as asked for; the exact value is 1 - nnz / numel
                results.append(r)
                tol = 1e-4 * max(1.0, math.sqrt(fin))
                if not args.no_check and not (r.max_abs_err <= tol):
                    print(f"WARNING: {r.shape} batch {batch} sparsity {sparsity:g}: dense and sparse "
                          f"differ by {r.max_abs_err:.3g} (outputs or input gradients)", file=sys.stderr)
                if args.markdown:
                    print(f"[{len(results)}] {plain_row(r)}", file=progress)
                else:
                    print(plain_row(r), file=progress)
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


if __name__ == "__main__":
    sys.exit(main())

"""Convolution benchmarks: dense ``nn.Conv2d`` vs ``SparseConv2d``, per layer and per
training step of a whole network.

Run through :mod:`sparseprop.bench`::

    python -m sparseprop.bench --conv [--help | --quick | options]
    python -m sparseprop.bench --resnet18 [--help | --quick | options]

``--conv``: per layer, the same method as the linear table (see :mod:`sparseprop.bench`).
For every (layer, batch, sparsity) a random ``SparseConv2d`` (no bias, as in ResNets
and MobileNets, where a BatchNorm follows) is built, and its dense twin is
``m.to_dense()``: an ``nn.Conv2d`` holding the same masked weights. The input
requires grad (a middle layer: the input gradient is computed), the weight/values
gradients are computed too and reset before every repetition. Forward, backward
(forward untimed) and forward+backward are timed *interleaved* (dense and sparse
back to back, alternating which goes first), after warm-up; the figures are medians
(:func:`sparseprop.bench.time_interleaved_samples`). Before timing, outputs, input
gradients and weight gradients (at the pattern's positions) are compared.

``--resnet18``: one whole SGD training step of the CIFAR ResNet-18 of
:func:`sparseprop.models.resnet18_cifar` (train mode, synthetic 32x32 batch, fixed
across steps): ``zero_grad(set_to_none=True)``, forward, cross-entropy, backward,
``SGD(lr, momentum=0.9).step()``. The sparse model has every convolution except
the stem (``conv1``) converted with ``SparseConv2d.from_dense(conv, sparsity=s)``
(:func:`sparseprop.models.sparsify_convs`); the dense model is its copy with every
``SparseConv2d`` replaced by ``to_dense()`` (:func:`sparseprop.densify`), so
both compute the same function. Whole steps are timed interleaved, medians.

Then the share of the step spent *outside* convolutions (BatchNorm, ReLU, residual
adds, pooling, the linear layer, the loss, gradient accumulation, the optimizer) is
measured with ``torch.profiler`` on a few further steps of each model; see
:func:`profile_step` for the method. ``--ops N`` prints the N ops with the most
self time in the sparse model's step next to the dense model's (:func:`op_self_ms`).
Peak resident memory of each model is measured in a fresh process per model
(:mod:`sparseprop._resnet_rss`; ``--rss-steps``, 0 skips). ``--gmp-steps N`` adds a
prune-from-dense run (:mod:`sparseprop._resnet_gmp`): N steps of the dense ResNet-18
under ``GradualMagnitudePruner`` to ``--gmp-sparsity`` against N plain dense steps,
whole-run wall time, mask updates and layer swaps included.
"""
from __future__ import annotations

import argparse
import copy
import csv
import gc
import itertools
import math
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
import torch.nn.functional as F

import sparseprop
from sparseprop import SparseConv2d

from .bench import (PassRatios, _make_pass_fns, _ms, _params, _parse_list, _ratio, _x,
                    header_lines, run_settings, time_interleaved_samples)
from .conv import LAYOUTS, set_layout
from .convert import densify
from .models import count_params, resnet18_cifar, sparsify_convs
from ._resnet_gmp import GMP_COLUMNS, gmp_cells, gmp_vs_dense
from ._resnet_rss import peak_rss_mib


# ----------------------------------------------------------------------------------------
# the layers
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvLayer:
    """One benchmarked convolution: ``in_channels -> out_channels``, square kernel,
    padding ``kernel // 2``, no bias, on ``size x size`` inputs."""

    name: str
    in_channels: int
    out_channels: int
    kernel: int
    stride: int = 1
    groups: int = 1
    size: int = 32

    @property
    def padding(self) -> int:
        return self.kernel // 2

    @property
    def out_size(self) -> int:
        return (self.size + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def label(self) -> str:
        k = f"{self.kernel}x{self.kernel}" + (f"/{self.stride}" if self.stride != 1 else "")
        if self.groups == self.in_channels == self.out_channels and self.groups > 1:
            return f"dw{k} {self.in_channels} @{self.size}"
        g = f" g{self.groups}" if self.groups != 1 else ""
        return f"{k} {self.in_channels}>{self.out_channels}{g} @{self.size}"

    def make(self, sparsity: float, generator: Optional[torch.Generator] = None) -> SparseConv2d:
        return SparseConv2d(self.in_channels, self.out_channels, self.kernel, stride=self.stride,
                            padding=self.padding, groups=self.groups, bias=False,
                            sparsity=sparsity, generator=generator)


_RESNET = [
    # ResNet-18 (CIFAR) 3x3 stride-1 convolutions of the four stages
    ConvLayer("c64", 64, 64, 3, 1, 1, 32),
    ConvLayer("c128", 128, 128, 3, 1, 1, 16),
    ConvLayer("c256", 256, 256, 3, 1, 1, 8),
    ConvLayer("c512", 512, 512, 3, 1, 1, 4),
    # first conv of stages 2-4: 3x3 stride 2
    ConvLayer("down128", 64, 128, 3, 2, 1, 32),
    ConvLayer("down256", 128, 256, 3, 2, 1, 16),
    ConvLayer("down512", 256, 512, 3, 2, 1, 8),
    # their shortcuts: 1x1 stride 2
    ConvLayer("sc128", 64, 128, 1, 2, 1, 32),
    ConvLayer("sc256", 128, 256, 1, 2, 1, 16),
    ConvLayer("sc512", 256, 512, 1, 2, 1, 8),
]
_MOBILENET = [
    ConvLayer("dw128", 128, 128, 3, 1, 128, 16),   # depthwise 3x3
    ConvLayer("pw128", 128, 256, 1, 1, 1, 16),     # pointwise 1x1
]
PRESET_LAYERS: Dict[str, ConvLayer] = {layer.name: layer for layer in _RESNET + _MOBILENET}
LAYER_GROUPS = {"resnet": [layer.name for layer in _RESNET],
                "mobilenet": [layer.name for layer in _MOBILENET],
                "all": list(PRESET_LAYERS)}

DEFAULT_LAYERS = "all"
DEFAULT_CONV_BATCHES = "1,8,32,64"
DEFAULT_CONV_SPARSITIES = "0.9,0.95,0.98"
QUICK_LAYERS = "c256,down128,sc128,dw128,pw128"
QUICK_CONV_BATCHES = "1,4"
QUICK_CONV_SPARSITIES = "0.9,0.98"

_SPEC = re.compile(r"^(\d+)-(\d+)-k(\d+)((?:-[sg]\d+)*)@(\d+)$")


def parse_layers(text: str) -> List[ConvLayer]:
    """Comma-separated preset names (``c64``, ``down128``, ``sc256``, ``dw128``, ...), groups
    (``resnet``, ``mobilenet``, ``all``) or specs ``IN-OUT-kK[-sS][-gG]@SIZE``."""
    layers: List[ConvLayer] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        key = item.lower()
        if key in LAYER_GROUPS:
            layers += [PRESET_LAYERS[n] for n in LAYER_GROUPS[key]]
        elif key in PRESET_LAYERS:
            layers.append(PRESET_LAYERS[key])
        else:
            m = _SPEC.match(key)
            if not m:
                raise argparse.ArgumentTypeError(
                    f"bad layer {item!r}: expected one of {', '.join(list(LAYER_GROUPS) + list(PRESET_LAYERS))} "
                    f"or IN-OUT-kK[-sS][-gG]@SIZE, e.g. 64-128-k3-s2@32")
            cin, cout, k, opts, size = m.groups()
            extra = dict(re.findall(r"-([sg])(\d+)", opts))
            layer = ConvLayer(item, int(cin), int(cout), int(k), int(extra.get("s", 1)),
                              int(extra.get("g", 1)), int(size))
            if min(layer.in_channels, layer.out_channels, layer.kernel, layer.stride, layer.groups,
                   layer.size) < 1 or layer.in_channels % layer.groups or layer.out_channels % layer.groups:
                raise argparse.ArgumentTypeError(f"bad layer {item!r}: sizes must be positive and "
                                                 f"groups must divide both channel counts")
            if layer.out_size < 1:
                raise argparse.ArgumentTypeError(f"bad layer {item!r}: kernel larger than the input")
            layers.append(layer)
    if not layers:
        raise argparse.ArgumentTypeError("no layers given")
    return list(dict.fromkeys(layers))  # drop repeats, keep order


# ----------------------------------------------------------------------------------------
# one layer configuration
# ----------------------------------------------------------------------------------------
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
        d = asdict(self)
        d.update(fwd_speedup=self.fwd_x, bwd_speedup=self.bwd_x, fwdbwd_speedup=self.fwdbwd_x)
        return d


def _rel_err(ref: torch.Tensor, other: torch.Tensor) -> float:
    """max |ref - other| / max |ref| (plain difference when ref is all zeros)."""
    if ref.numel() == 0:
        return 0.0
    diff = float((ref - other).abs().max())
    scale = float(ref.abs().max())
    return diff / scale if scale > 0 else diff


def check_conv(dense: nn.Conv2d, sparse: SparseConv2d, x: torch.Tensor, grad: torch.Tensor) -> float:
    """Largest normalized difference (:func:`_rel_err`) of outputs, input gradients and
    weight gradients (dense gradient read at the sparse pattern), dense vs sparse."""
    got = []
    for m in (dense, sparse):
        x.grad = None
        for p in _params(m):
            p.grad = None
        y = m(x)
        y.backward(grad)
        w_grad = (sparse.pattern.gather(m.weight.grad.reshape(sparse.pattern_shape))
                  if m is dense else m.values.grad)
        got.append((y.detach(), x.grad.clone(), w_grad.clone()))
    x.grad = None
    for m in (dense, sparse):
        for p in _params(m):
            p.grad = None
    return max(_rel_err(a, b) for a, b in zip(*got))


def layout_used(sparse: SparseConv2d, batch: int) -> str:
    """The data layout ("batch" or "width") of the index plan ``sparse`` built for ``batch``."""
    return next((key[0] for key in sparse._plans if key[1] == batch), "?")


def bench_conv_config(layer: ConvLayer, sparse: SparseConv2d, dense: nn.Conv2d, batch: int, *,
                      reps: Optional[int], warmup: int, target_time: float, min_reps: int = 5,
                      max_reps: int = 50, seed: int = 0, check: bool = True) -> ConvResult:
    """Time forward, backward and forward+backward of ``dense`` and ``sparse`` at ``batch``."""
    gen = torch.Generator().manual_seed(seed + 7919 * batch)
    x = torch.randn(batch, layer.in_channels, layer.size, layer.size,
                    generator=gen).requires_grad_(True)
    grad = torch.randn(batch, layer.out_channels, layer.out_size, layer.out_size, generator=gen)

    err = check_conv(dense, sparse, x, grad) if check else float("nan")

    dense_fns = _make_pass_fns(dense, x, grad)
    sparse_fns = _make_pass_fns(sparse, x, grad)
    medians, counts = [], []
    for which in range(3):  # forward, backward, forward+backward
        s = time_interleaved_samples([dense_fns[which], sparse_fns[which]], reps, warmup,
                                     min_reps=min_reps, max_reps=max_reps, target_time=target_time)
        medians.append([statistics.median(v) * 1e3 for v in s])
        counts.append(len(s[0]))
    return ConvResult(layer.label, layer.in_channels, layer.out_channels, layer.kernel, layer.stride,
                      layer.groups, layer.size, batch, sparse.sparsity, sparse.nnz,
                      layout_used(sparse, batch), sparseprop.get_num_threads(), sparseprop.get_isa(), *counts,
                      medians[0][0], medians[0][1], medians[1][0], medians[1][1],
                      medians[2][0], medians[2][1], err)


# ----------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------
class Table:
    """Fixed-width plain rows and a GitHub markdown table from the same cells."""

    def __init__(self, columns: Sequence[str], widths: Sequence[int], left: int = 1) -> None:
        self.columns, self.widths, self.left = list(columns), list(widths), left

    def _line(self, cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < self.left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, self.widths)))

    def plain_header(self) -> str:
        return self._line(self.columns)

    def plain_row(self, cells: Sequence[str]) -> str:
        return self._line(cells)

    def markdown(self, rows: Sequence[Sequence[str]]) -> str:
        lines = ["| " + " | ".join(self.columns) + " |",
                 "|" + "|".join(["---"] * self.left + ["---:"] * (len(self.columns) - self.left)) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)


CONV_TABLE = Table(["layer", "batch", "sparsity", "layout", "dense fwd ms", "sparse fwd ms", "fwd x",
                    "dense bwd ms", "sparse bwd ms", "bwd x", "dense f+b ms", "sparse f+b ms",
                    "fwd+bwd x"],
                   [18, 5, 8, 6, 12, 13, 6, 12, 13, 6, 12, 13, 9])


def conv_cells(r: ConvResult) -> List[str]:
    return [r.layer, str(r.batch), f"{r.sparsity:g}", r.layout, _ms(r.dense_fwd_ms), _ms(r.sparse_fwd_ms),
            _x(r.fwd_x), _ms(r.dense_bwd_ms), _ms(r.sparse_bwd_ms), _x(r.bwd_x),
            _ms(r.dense_fwdbwd_ms), _ms(r.sparse_fwdbwd_ms), _x(r.fwdbwd_x)]


def write_rows_csv(path: str, rows: Sequence[dict], fallback_fields: Sequence[str]) -> None:
    names = list(rows[0].keys()) if rows else list(fallback_fields)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        w.writerows(rows)


def _print_header(out, markdown: bool, extra: Sequence[str]) -> None:
    head = header_lines()
    if markdown:
        print("\n".join(f"- {line}" for line in head + list(extra)), file=out)
        print(file=out)
    else:
        print("\n".join(head + list(extra)), file=out)
        print("times are medians in ms; x = dense time / sparse time (>1: sparse faster)\n", file=out)
    out.flush()


# ----------------------------------------------------------------------------------------
# command lines
# ----------------------------------------------------------------------------------------
def _common_options(p: argparse.ArgumentParser, min_time: float, reps_text: str) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="threads for torch and sparseprop alike (default: torch.get_num_threads())")
    p.add_argument("--isa", default=None,
                   help="force a sparseprop kernel path (scalar, avx2, avx512, neon; default: best)")
    p.add_argument("--reps", type=int, default=None, help=f"timed repetitions ({reps_text})")
    p.add_argument("--warmup", type=int, default=None, help="untimed repetitions first (default 2)")
    p.add_argument("--min-time", type=float, default=min_time,
                   help=f"adaptive repetitions: timed seconds per side, on average over the two "
                        f"sides (default {min_time:g})")
    p.add_argument("--seed", type=int, default=0, help="seed for patterns, weights and inputs")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing dense and sparse results before timing")
    p.add_argument("--csv", metavar="FILE", help="also write all results as CSV")
    p.add_argument("--markdown", action="store_true",
                   help="print GitHub markdown table(s) (progress goes to stderr)")


def build_conv_parser() -> argparse.ArgumentParser:
    layers = ", ".join(f"{n} ({layer.label})" for n, layer in PRESET_LAYERS.items())
    p = argparse.ArgumentParser(
        prog="python -m sparseprop.bench --conv",
        description="Time dense nn.Conv2d against sparseprop.SparseConv2d (same masked weights, "
                    "no bias), forward, backward and forward+backward, input requiring grad; "
                    "interleaved, medians. Speedup = dense time / sparse time. "
                    f"Preset layers (name (kernel/stride in>out @input size)): {layers}.")
    p.add_argument("--layers", type=parse_layers, default=None,
                   help=f"comma-separated preset names, groups (resnet, mobilenet, all) or specs "
                        f"IN-OUT-kK[-sS][-gG]@SIZE such as 64-128-k3-s2@32 or 128-128-k3-g128@16 "
                        f"(padding K//2; default {DEFAULT_LAYERS})")
    p.add_argument("--batch", type=_parse_list(int, lambda v: v >= 1, "batch"), default=None,
                   help=f"comma-separated batch sizes (default {DEFAULT_CONV_BATCHES})")
    p.add_argument("--sparsity", type=_parse_list(float, lambda v: 0.0 <= v < 1.0, "sparsity"),
                   default=None, help=f"comma-separated sparsities in [0, 1) (default {DEFAULT_CONV_SPARSITIES})")
    p.add_argument("--layout", type=_parse_list(str, lambda v: v in LAYOUTS, "layout"),
                   default=None,
                   help="comma-separated data layouts to time, each in turn: auto (default; "
                        "sparseprop's own choice), batch (batch-innermost phase layout), width "
                        "(native NCHW)")
    p.add_argument("--strategy", type=_parse_list(str, lambda v: v in LAYOUTS, "strategy"),
                   default=None, help="deprecated old name of --layout")
    _common_options(p, 0.2, "per pass; default: adaptive, --min-time per side, 5..50")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: layers {QUICK_LAYERS}, batch {QUICK_CONV_BATCHES}, sparsity "
                        f"{QUICK_CONV_SPARSITIES}, 3 reps, 1 warm-up (explicit flags still win)")
    return p


def _check_counts(parser, reps, warmup, threads) -> None:
    if reps is not None and reps < 1:
        parser.error("--reps must be >= 1")
    if warmup < 0:
        parser.error("--warmup must be >= 0")
    if threads < 1:
        parser.error("--threads must be >= 1")


def main_conv(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_conv_parser()
    args = parser.parse_args(argv)
    if args.strategy is not None:
        if args.layout is not None:
            parser.error("give --layout only (--strategy is its deprecated old name)")
        print("warning: --strategy is deprecated, use --layout (same values)", file=sys.stderr)
        args.layout = args.strategy
    args.layout = args.layout or ["auto"]
    layers = args.layers or parse_layers(QUICK_LAYERS if args.quick else DEFAULT_LAYERS)
    batches = args.batch or [int(v) for v in (QUICK_CONV_BATCHES if args.quick else DEFAULT_CONV_BATCHES).split(",")]
    sparsities = args.sparsity or [float(v) for v in (QUICK_CONV_SPARSITIES if args.quick
                                                      else DEFAULT_CONV_SPARSITIES).split(",")]
    reps = args.reps if args.reps is not None else (3 if args.quick else None)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    threads = args.threads if args.threads is not None else torch.get_num_threads()
    _check_counts(parser, reps, warmup, threads)
    with run_settings(parser, threads, args.isa):
        return _run_conv(args, layers, batches, sparsities, reps, warmup)


def _run_conv(args, layers, batches, sparsities, reps, warmup) -> int:
    out = sys.stdout
    progress = sys.stderr if args.markdown else sys.stdout
    _print_header(out, args.markdown, [])
    if not args.markdown:
        print(CONV_TABLE.plain_header(), file=out)
        out.flush()

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
            sparse._plans.clear()  # plans are per layout: keep only this one's
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
            print(prefix + CONV_TABLE.plain_row(conv_cells(r)), file=progress)
            progress.flush()
        del built
        gc.collect()
    elapsed = time.perf_counter() - start

    if args.markdown:
        print(CONV_TABLE.markdown([conv_cells(r) for r in results]), file=out)
    print(f"\n{len(results)} configuration(s) in {elapsed:.1f} s",
          file=sys.stderr if args.markdown else out)
    if args.csv:
        write_rows_csv(args.csv, [r.row() for r in results], [f.name for f in fields(ConvResult)])
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------------------
# ResNet-18 training step
# ----------------------------------------------------------------------------------------
DEFAULT_STEP_BATCHES = "64"
DEFAULT_STEP_SPARSITIES = "0.9,0.95,0.98"
QUICK_STEP_BATCHES = "4"
QUICK_STEP_SPARSITIES = "0.9,0.98"

_FWD_DENSE = "sparseprop.bench::conv2d_forward"
_FWD_SPARSE = "sparseprop.bench::sparse_conv2d_forward"
_NODE = "autograd::engine::evaluate_function: "


def _conv_kind(key: str) -> Optional[str]:
    """'dense' / 'sparse' for a profiler event that is a whole convolution forward or
    backward (outermost event only, so nothing is counted twice), else None."""
    if key == _FWD_DENSE:
        return "dense"
    if key == _FWD_SPARSE:
        return "sparse"
    if key.startswith(_NODE):
        node = key[len(_NODE):].lower()
        if "sparseconv2d" in node:  # _SparseConv2dFn, _SparseConv2dWidthFn
            return "sparse"
        if "conv" in node and "backward" in node:  # ConvolutionBackward0 (and older names)
            return "dense"
    return None


def _annotate_convs(model: nn.Module) -> List:
    """Wrap the forward of every nn.Conv2d / SparseConv2d of ``model`` in a profiler
    ``record_function`` range (via forward pre-/post-hooks); returns the hook handles."""
    handles = []
    for m in model.modules():
        if not isinstance(m, (nn.Conv2d, SparseConv2d)):
            continue
        tag = _FWD_SPARSE if isinstance(m, SparseConv2d) else _FWD_DENSE
        stack: List = []

        def pre(mod, inputs, tag=tag, stack=stack):
            rf = torch.autograd.profiler.record_function(tag)
            rf.__enter__()
            stack.append(rf)

        def post(mod, inputs, output, stack=stack):
            stack.pop().__exit__(None, None, None)

        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    return handles


def op_self_ms(model: nn.Module, step: Callable[[], object], steps: int) -> Dict[str, float]:
    """Self CPU ms per step of every op (torch.profiler key) over ``steps`` profiled
    steps: where the step's time goes, op by op (``--ops``). Self time counts each
    microsecond once, in the innermost op; a sparse conv's Python-side layout copies
    and its kernels show as the ``_SparseConv2d(Width)Fn`` entries."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return {e.key: e.self_cpu_time_total * 1e-3 / steps for e in prof.key_averages()}


def ops_table_lines(dense: Dict[str, float], sparse: Dict[str, float], top: int) -> List[str]:
    """The ``top`` ops by sparse-model self time, next to the dense model's time for the
    same op (ms per step)."""
    names = sorted(sparse, key=sparse.get, reverse=True)[:top]
    width = max([len(n) for n in names] + [10])
    lines = [f"{'op':<{width}}  {'sparse ms':>10}  {'dense ms':>10}"]
    for n in names:
        lines.append(f"{n:<{width}}  {sparse[n]:>10.1f}  {dense.get(n, 0.0):>10.1f}")
    lines.append(f"{'(all ops)':<{width}}  {sum(sparse.values()):>10.1f}  {sum(dense.values()):>10.1f}")
    return lines


def profile_step(model: nn.Module, step: Callable[[], object], steps: int) -> Tuple[float, float, float]:
    """(step ms, dense-conv ms, sparse-conv ms) per step, over ``steps`` profiled steps.

    Method: ``torch.profiler`` (CPU activity) records ``steps`` training steps, whose
    wall time is taken with ``time.perf_counter``. Convolution time is the *inclusive*
    CPU time (on CPU this is elapsed time on the calling thread, intra-op worker
    threads included) of

    * each convolution module's forward, marked by a ``record_function`` range opened
      and closed by forward pre-/post-hooks (so the Python side of SparseConv2d, its
      layout transforms and index-plan lookups count as convolution), and
    * each convolution's autograd node in the backward pass
      (``autograd::engine::evaluate_function: ConvolutionBackward0`` for nn.Conv2d,
      ``...: _SparseConv2d(Width)FnBackward`` for SparseConv2d), which computes the input and
      weight gradients together.

    These ranges never nest in one another, so their sum is the convolution time;
    everything else in the step (BatchNorm, ReLU, adds, pooling, linear, loss,
    AccumulateGrad, zero_grad, optimizer step, autograd engine overhead) is "outside
    convolutions". The profiler adds a few microseconds per recorded op, mostly to
    the many small non-convolution ops, so the outside share is slightly overstated;
    compare the profiled step time with the unprofiled median to judge.
    """
    from torch.profiler import ProfilerActivity, profile

    handles = _annotate_convs(model)
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                total = time.perf_counter() - t0
            finally:
                if gc_was_enabled:
                    gc.enable()
    finally:
        for h in handles:
            h.remove()
    conv_us = {"dense": 0.0, "sparse": 0.0}
    for e in prof.key_averages():
        kind = _conv_kind(e.key)
        if kind is not None:
            conv_us[kind] += e.cpu_time_total
    return total * 1e3 / steps, conv_us["dense"] * 1e-3 / steps, conv_us["sparse"] * 1e-3 / steps


def make_train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                    lr: float) -> Callable[[], torch.Tensor]:
    """One SGD step on (x, target): zero_grad, forward, cross-entropy, backward, step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), target)
        loss.backward()
        opt.step()
        return loss

    return step


@dataclass
class StepResult:
    batch: int
    sparsity: float
    sparse_convs: int
    conv_nnz: int
    dense_params: int
    sparse_params: int
    threads: int
    isa: str
    reps: int
    dense_step_ms: float
    sparse_step_ms: float
    profile_steps: int
    dense_prof_step_ms: float     # profiled step time of the dense model
    dense_conv_ms: float          # its convolutions (forward + backward)
    sparse_prof_step_ms: float    # profiled step time of the sparse model
    sparse_conv_ms: float         # its SparseConv2d layers (forward + backward)
    sparse_stem_ms: float         # its remaining dense convolutions (the stem)
    max_rel_err: float            # logits, dense vs sparse model, before timing
    dense_rss_mib: float = float("nan")   # peak RSS of a fresh process training it (see _resnet_rss)
    sparse_rss_mib: float = float("nan")

    @property
    def step_x(self) -> float:
        return _ratio(self.dense_step_ms, self.sparse_step_ms)

    @property
    def dense_other_ms(self) -> float:
        return self.dense_prof_step_ms - self.dense_conv_ms

    @property
    def sparse_other_ms(self) -> float:
        return self.sparse_prof_step_ms - self.sparse_conv_ms - self.sparse_stem_ms

    @property
    def dense_other_share(self) -> float:
        return _ratio(self.dense_other_ms, self.dense_prof_step_ms)

    @property
    def sparse_other_share(self) -> float:
        return _ratio(self.sparse_other_ms, self.sparse_prof_step_ms)

    @property
    def bound_x(self) -> float:
        """Step speedup if the sparsified convolutions took no time at all (everything
        else as in the dense model, the stem as measured in the sparse one): the
        Amdahl limit that the non-convolution work puts on this network."""
        return _ratio(self.dense_prof_step_ms, self.dense_other_ms + self.sparse_stem_ms)

    def row(self) -> dict:
        d = asdict(self)
        d.update(step_speedup=self.step_x, dense_other_ms=self.dense_other_ms,
                 sparse_other_ms=self.sparse_other_ms, dense_other_share=self.dense_other_share,
                 sparse_other_share=self.sparse_other_share, convs_free_speedup=self.bound_x)
        return d


STEP_TABLE = Table(["batch", "sparsity", "dense step ms", "sparse step ms", "step x",
                    "dense outside-conv %", "sparse outside-conv %", "convs-free x",
                    "dense peak MiB", "sparse peak MiB"],
                   [5, 8, 13, 14, 6, 20, 21, 12, 14, 15], left=0)
BREAKDOWN_TABLE = Table(["model", "batch", "profiled step ms", "dense conv ms", "sparse conv ms",
                         "outside-conv ms", "outside-conv %"],
                        [12, 5, 16, 13, 14, 15, 14])


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{100 * v:.1f}"


def _msn(v: float) -> str:
    return "n/a" if math.isnan(v) else _ms(v)


def step_cells(r: StepResult) -> List[str]:
    return [str(r.batch), f"{r.sparsity:g}", _ms(r.dense_step_ms), _ms(r.sparse_step_ms),
            _x(r.step_x), _pct(r.dense_other_share), _pct(r.sparse_other_share),
            "n/a" if math.isnan(r.bound_x) else _x(r.bound_x), _mib(r.dense_rss_mib),
            _mib(r.sparse_rss_mib)]


def _mib(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.0f}"


def breakdown_cells(r: StepResult) -> List[List[str]]:
    return [["dense", str(r.batch), _msn(r.dense_prof_step_ms), _msn(r.dense_conv_ms), "-",
             _msn(r.dense_other_ms), _pct(r.dense_other_share)],
            [f"sparse {r.sparsity:g}", str(r.batch), _msn(r.sparse_prof_step_ms),
             _msn(r.sparse_stem_ms), _msn(r.sparse_conv_ms), _msn(r.sparse_other_ms),
             _pct(r.sparse_other_share)]]


def bench_resnet18_step(base: nn.Module, sparsity: float, batch: int, *, reps: Optional[int],
                        warmup: int, target_time: float, profile_steps: int, lr: float = 0.01,
                        seed: int = 0, check: bool = True, min_reps: int = 5,
                        max_reps: int = 20, num_classes: int = 10, rss_steps: int = 0,
                        ops: int = 0, out=None) -> StepResult:
    """Dense vs sparse training step of (a copy of) ``base`` at ``sparsity``."""
    sparse = sparsify_convs(copy.deepcopy(base), sparsity, skip=("conv1",)).train()
    dense = densify(copy.deepcopy(sparse)).train()
    sparse_layers = [m for m in sparse.modules() if isinstance(m, SparseConv2d)]
    gen = torch.Generator().manual_seed(seed + 7919 * batch)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    target = torch.randint(0, num_classes, (batch,), generator=gen)

    err = float("nan")
    if check:
        with torch.no_grad():  # train mode: BN uses batch statistics in both
            err = _rel_err(dense(x), sparse(x))

    dense_step = make_train_step(dense, x, target, lr)
    sparse_step = make_train_step(sparse, x, target, lr)
    s = time_interleaved_samples([dense_step, sparse_step], reps, warmup, min_reps=min_reps,
                                 max_reps=max_reps, target_time=target_time)
    dense_ms, sparse_ms = (statistics.median(v) * 1e3 for v in s)

    nan = float("nan")
    dp = dc = sp = sc = ss = nan
    if profile_steps > 0:
        dp, dc, _ = profile_step(dense, dense_step, profile_steps)
        sp, ss, sc = profile_step(sparse, sparse_step, profile_steps)
    if ops > 0:
        print(f"\nper-op self CPU time, batch {batch}, sparsity {sparsity:g} (ms per step, "
              f"{max(profile_steps, 1)} profiled step(s)):", file=out or sys.stdout)
        steps = max(profile_steps, 1)
        lines = ops_table_lines(op_self_ms(dense, dense_step, steps),
                                op_self_ms(sparse, sparse_step, steps), ops)
        print("\n".join(lines) + "\n", file=out or sys.stdout)
    drss = srss = nan
    if rss_steps > 0:
        threads, isa = sparseprop.get_num_threads(), sparseprop.get_isa()
        drss = peak_rss_mib("dense", sparsity, batch, rss_steps, threads, isa, seed)
        srss = peak_rss_mib("sparse", sparsity, batch, rss_steps, threads, isa, seed)
    return StepResult(batch, sparsity, len(sparse_layers), sum(m.nnz for m in sparse_layers),
                      count_params(dense)[0], count_params(sparse)[0], sparseprop.get_num_threads(),
                      sparseprop.get_isa(), len(s[0]), dense_ms, sparse_ms, profile_steps,
                      dp, dc, sp, sc, ss, err, drss, srss)


def build_resnet18_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sparseprop.bench --resnet18",
        description="Time one SGD training step (zero_grad, forward, cross-entropy, backward, "
                    "SGD momentum 0.9 step) of a CIFAR ResNet-18 (sparseprop.models.resnet18_cifar, "
                    "32x32 inputs) with every conv but the stem a SparseConv2d, against the same "
                    "masked model run dense; interleaved, medians. Then profile a few more steps "
                    "of each to get the share of the step spent outside convolutions.")
    p.add_argument("--batch", type=_parse_list(int, lambda v: v >= 1, "batch"), default=None,
                   help=f"comma-separated batch sizes (default {DEFAULT_STEP_BATCHES})")
    p.add_argument("--sparsity", type=_parse_list(float, lambda v: 0.0 <= v < 1.0, "sparsity"),
                   default=None, help=f"comma-separated sparsities in [0, 1) of the converted "
                                      f"convolutions (default {DEFAULT_STEP_SPARSITIES})")
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate (default 0.01)")
    p.add_argument("--profile-steps", type=int, default=None,
                   help="profiled steps per model for the outside-convolution share "
                        "(default 2; 0 skips profiling)")
    p.add_argument("--rss-steps", type=int, default=None,
                   help="training steps of each model in its own fresh process, for its peak "
                        "resident memory (default 2, --quick 1; 0 skips)")
    p.add_argument("--ops", type=int, default=0, metavar="N",
                   help="also print the N ops with the most self CPU time in the sparse model's "
                        "profiled step, next to the dense model's (default 0: off)")
    p.add_argument("--gmp-steps", type=int, default=0, metavar="N",
                   help="also time a prune-from-dense run: N SGD steps under gradual magnitude "
                        "pruning (cubic ramp over the first half) against N dense steps, at the "
                        "first --batch (default 0: off; a few hundred for a real figure)")
    p.add_argument("--gmp-sparsity", type=float, default=0.9,
                   help="final sparsity of the --gmp-steps run (default 0.9)")
    _common_options(p, 1.0, "steps per model; default: adaptive, --min-time per model, 5..20")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: batch {QUICK_STEP_BATCHES}, sparsity {QUICK_STEP_SPARSITIES}, "
                        f"2 reps, 1 warm-up, 1 profiled step (explicit flags still win)")
    return p


def main_resnet18(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_resnet18_parser()
    args = parser.parse_args(argv)
    batches = args.batch or [int(v) for v in (QUICK_STEP_BATCHES if args.quick else DEFAULT_STEP_BATCHES).split(",")]
    sparsities = args.sparsity or [float(v) for v in (QUICK_STEP_SPARSITIES if args.quick
                                                      else DEFAULT_STEP_SPARSITIES).split(",")]
    reps = args.reps if args.reps is not None else (2 if args.quick else None)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    profile_steps = args.profile_steps if args.profile_steps is not None else (1 if args.quick else 2)
    threads = args.threads if args.threads is not None else torch.get_num_threads()
    _check_counts(parser, reps, warmup, threads)
    if profile_steps < 0:
        parser.error("--profile-steps must be >= 0")
    rss_steps = args.rss_steps if args.rss_steps is not None else (1 if args.quick else 2)
    if rss_steps < 0 or args.ops < 0:
        parser.error("--rss-steps and --ops must be >= 0")
    if args.gmp_steps == 1 or args.gmp_steps < 0:
        parser.error("--gmp-steps must be 0 (off) or >= 2")
    if not 0.0 < args.gmp_sparsity < 1.0:
        parser.error("--gmp-sparsity must be in (0, 1)")
    args.rss_steps = rss_steps
    with run_settings(parser, threads, args.isa):
        return _run_resnet18(args, batches, sparsities, reps, warmup, profile_steps)


def _run_resnet18(args, batches, sparsities, reps, warmup, profile_steps) -> int:
    out = sys.stdout
    progress = sys.stderr if args.markdown else sys.stdout
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(args.seed)
        base = resnet18_cifar(num_classes=10)
    what = (f"ResNet-18 (CIFAR, 32x32, 10 classes), one training step: zero_grad, forward, "
            f"cross-entropy, backward, SGD(lr={args.lr:g}, momentum=0.9).step(); sparse = every "
            f"conv but the stem is a SparseConv2d; dense = the same masked model with nn.Conv2d")
    _print_header(out, args.markdown, [f"model:      {what}"])
    if not args.markdown:
        print(STEP_TABLE.plain_header(), file=out)
        out.flush()

    results: List[StepResult] = []
    start = time.perf_counter()
    for batch in batches:
        for sparsity in sparsities:
            r = bench_resnet18_step(base, sparsity, batch, reps=reps, warmup=warmup,
                                    target_time=args.min_time, profile_steps=profile_steps,
                                    lr=args.lr, seed=args.seed, check=not args.no_check,
                                    rss_steps=args.rss_steps, ops=args.ops, out=progress)
            results.append(r)
            if not args.no_check and not (r.max_rel_err <= 1e-3):
                print(f"WARNING: batch {batch} sparsity {sparsity:g}: dense and sparse models' "
                      f"logits differ by {r.max_rel_err:.3g} (relative)", file=sys.stderr)
            prefix = f"[{len(results)}] " if args.markdown else ""
            print(prefix + STEP_TABLE.plain_row(step_cells(r)), file=progress)
            progress.flush()
            gc.collect()
    gmp = None
    if args.gmp_steps:
        print(f"\nprune-from-dense run: {args.gmp_steps} steps, batch {batches[0]}, GMP to "
              f"{args.gmp_sparsity:g} (stem and fc dense) vs dense ...", file=progress)
        progress.flush()
        gmp = gmp_vs_dense(base, args.gmp_steps, batches[0], args.gmp_sparsity, lr=args.lr,
                           seed=args.seed)
    elapsed = time.perf_counter() - start

    notes = [
        "outside-conv %: share of the step outside convolutions (BatchNorm, ReLU, adds, pool, "
        "linear, loss, optimizer, autograd overhead), from torch.profiler over "
        f"{profile_steps} more step(s) per model (see sparseprop.bench_conv.profile_step)",
        "convs-free x: dense step / (dense outside-conv + stem conv time): the step speedup if "
        "the sparsified convolutions cost nothing",
        f"peak MiB: peak RSS of a fresh process building that model and training it "
        f"{args.rss_steps} step(s) (sparseprop._resnet_rss; n/a with --rss-steps 0)",
    ]
    if args.markdown:
        print(STEP_TABLE.markdown([step_cells(r) for r in results]), file=out)
        if profile_steps > 0:
            print(file=out)
            print(BREAKDOWN_TABLE.markdown([c for r in results for c in breakdown_cells(r)]), file=out)
        print(file=out)
        print("\n".join(f"- {n}" for n in notes), file=out)
    else:
        if profile_steps > 0:
            print(f"\nprofiled steps (ms per step; dense conv ms of the sparse model = the stem):",
                  file=out)
            print(BREAKDOWN_TABLE.plain_header(), file=out)
            for r in results:
                for cells in breakdown_cells(r):
                    print(BREAKDOWN_TABLE.plain_row(cells), file=out)
        print("\n" + "\n".join(notes), file=out)
    if gmp is not None:
        table = Table(GMP_COLUMNS, [max(len(c), 7) for c in GMP_COLUMNS])
        print(file=out)
        if args.markdown:
            print(table.markdown([gmp_cells(gmp)]), file=out)
        else:
            print(table.plain_header(), file=out)
            print(table.plain_row(gmp_cells(gmp)), file=out)
        print("end-to-end x: dense run / GMP run, whole runs (one fixed synthetic batch; GMP's "
              "mask updates, masked-dense steps and layer swaps included)", file=out)
    print(f"\n{len(results)} configuration(s) in {elapsed:.1f} s",
          file=sys.stderr if args.markdown else out)
    if args.csv:
        write_rows_csv(args.csv, [r.row() for r in results], [f.name for f in fields(StepResult)])
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main_conv())

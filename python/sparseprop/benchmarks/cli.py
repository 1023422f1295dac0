"""The command lines of ``python -m sparseprop.bench`` (also the ``sparseprop-bench``
console script): argument parsing, defaults and ``main``.

* no mode flag: the linear table (:mod:`.linear`), or with ``--overhead`` the per-call
  overhead line (:mod:`.overhead`);
* ``--conv``: the convolution table (:mod:`.conv`), options of its own (``--conv --help``);
* ``--resnet18``: one ResNet-18 training step (:mod:`.resnet`), options of its own.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence, Tuple

import torch

from ..conv import LAYOUTS
from . import conv, linear, resnet
from .conv_layers import PRESET_LAYERS, parse_layers
from .output import header_lines
from .overhead import overhead_line
from .settings import run_settings

DEFAULT_SHAPES = "768x3072,3072x768,1024x1024,4096x4096"
DEFAULT_BATCHES = "1,16,256"
DEFAULT_SPARSITIES = "0.5,0.8,0.9,0.95,0.98,0.99"
QUICK_SHAPES = "256x512,512x256"
QUICK_BATCHES = "1,16"
QUICK_SPARSITIES = "0.9,0.99"

DEFAULT_LAYERS = "all"
DEFAULT_CONV_BATCHES = "1,8,32,64"
DEFAULT_CONV_SPARSITIES = "0.9,0.95,0.98"
QUICK_LAYERS = "c256,down128,sc128,dw128,pw128"
QUICK_CONV_BATCHES = "1,4"
QUICK_CONV_SPARSITIES = "0.9,0.98"

DEFAULT_STEP_BATCHES = "64"
DEFAULT_STEP_SPARSITIES = "0.9,0.95,0.98"
QUICK_STEP_BATCHES = "4"
QUICK_STEP_SPARSITIES = "0.9,0.98"


# ----------------------------------------------------------------------------------------
# argument types
# ----------------------------------------------------------------------------------------
def parse_shapes(text: str) -> List[Tuple[int, int]]:
    """Comma-separated ``INxOUT`` (or ``IN->OUT``) layer shapes."""
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


def parse_list(kind, check, what):
    """An argparse type: a comma-separated list of ``kind`` values that pass ``check``."""
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


_batches = parse_list(int, lambda v: v >= 1, "batch")
_sparsities = parse_list(float, lambda v: 0.0 <= v < 1.0, "sparsity")


def _check_counts(parser, reps, warmup, threads) -> None:
    if reps is not None and reps < 1:
        parser.error("--reps must be >= 1")
    if warmup < 0:
        parser.error("--warmup must be >= 0")
    if threads < 1:
        parser.error("--threads must be >= 1")


def _run_options(args, quick_reps: int):
    """(reps, warmup, threads) from the options, with ``--quick``'s defaults."""
    reps = args.reps if args.reps is not None else (quick_reps if args.quick else None)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    threads = args.threads if args.threads is not None else torch.get_num_threads()
    return reps, warmup, threads


# ----------------------------------------------------------------------------------------
# the linear table (and --overhead)
# ----------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sparseprop.bench",
        description="Time dense nn.Linear against sparseprop.SparseLinear (same masked "
                    "weights), forward, backward and forward+backward; interleaved, medians. "
                    "Speedup = dense time / sparse time.")
    p.add_argument("--shapes", type=parse_shapes, default=None,
                   help=f"comma-separated INxOUT layer shapes (default {DEFAULT_SHAPES})")
    p.add_argument("--batch", type=_batches, default=None,
                   help=f"comma-separated batch sizes (default {DEFAULT_BATCHES})")
    p.add_argument("--sparsity", type=_sparsities,
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
    p.add_argument("--storage", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="dtype the sparse layer stores its weights in (computes in float32; "
                        "the dense layer stays float32 with the same weights); default float32")
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
        return main_conv(rest) if mode == "conv" else main_resnet18(rest)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.conv or args.resnet18:  # an abbreviation such as --con got here
        parser.error("spell out --conv / --resnet18 in full")

    shapes = args.shapes or parse_shapes(QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    batches = args.batch or _batches(QUICK_BATCHES if args.quick else DEFAULT_BATCHES)
    sparsities = args.sparsity or _sparsities(QUICK_SPARSITIES if args.quick else DEFAULT_SPARSITIES)
    reps, warmup, threads = _run_options(args, quick_reps=3)
    _check_counts(parser, reps, warmup, threads)
    with run_settings(parser, threads, args.isa):
        if args.overhead:
            print("\n".join(header_lines()))
            print(overhead_line(sparsity=sparsities[0] if args.sparsity else 0.9,
                                steps=100 if args.quick else 500, rounds=3 if args.quick else 9))
            return 0
        return linear.run_table(args, shapes, batches, sparsities, reps, warmup, threads)


# ----------------------------------------------------------------------------------------
# --conv and --resnet18
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
    p.add_argument("--batch", type=_batches, default=None,
                   help=f"comma-separated batch sizes (default {DEFAULT_CONV_BATCHES})")
    p.add_argument("--sparsity", type=_sparsities,
                   default=None, help=f"comma-separated sparsities in [0, 1) (default {DEFAULT_CONV_SPARSITIES})")
    p.add_argument("--layout", type=parse_list(str, lambda v: v in LAYOUTS, "layout"),
                   default=None,
                   help="comma-separated data layouts to time, each in turn: auto (default; "
                        "sparseprop's own choice), batch (batch-innermost phase layout), width "
                        "(native NCHW)")
    p.add_argument("--strategy", type=parse_list(str, lambda v: v in LAYOUTS, "strategy"),
                   default=None, help="deprecated old name of --layout")
    _common_options(p, 0.2, "per pass; default: adaptive, --min-time per side, 5..50")
    p.add_argument("--quick", action="store_true",
                   help=f"smoke run: layers {QUICK_LAYERS}, batch {QUICK_CONV_BATCHES}, sparsity "
                        f"{QUICK_CONV_SPARSITIES}, 3 reps, 1 warm-up (explicit flags still win)")
    return p


def main_conv(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m sparseprop.bench --conv`` (``argv``: the arguments after ``--conv``)."""
    parser = build_conv_parser()
    args = parser.parse_args(argv)
    if args.strategy is not None:
        if args.layout is not None:
            parser.error("give --layout only (--strategy is its deprecated old name)")
        print("warning: --strategy is deprecated, use --layout (same values)", file=sys.stderr)
        args.layout = args.strategy
    args.layout = args.layout or ["auto"]
    layers = args.layers or parse_layers(QUICK_LAYERS if args.quick else DEFAULT_LAYERS)
    batches = args.batch or _batches(QUICK_CONV_BATCHES if args.quick else DEFAULT_CONV_BATCHES)
    sparsities = args.sparsity or _sparsities(QUICK_CONV_SPARSITIES if args.quick
                                              else DEFAULT_CONV_SPARSITIES)
    reps, warmup, threads = _run_options(args, quick_reps=3)
    _check_counts(parser, reps, warmup, threads)
    with run_settings(parser, threads, args.isa):
        return conv.run_table(args, layers, batches, sparsities, reps, warmup)


def build_resnet18_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sparseprop.bench --resnet18",
        description="Time one SGD training step (zero_grad, forward, cross-entropy, backward, "
                    "SGD momentum 0.9 step) of a CIFAR ResNet-18 "
                    "(sparseprop.benchmarks.resnet_models.resnet18_cifar, "
                    "32x32 inputs) with every conv but the stem a SparseConv2d, against the same "
                    "masked model run dense; interleaved, medians. Then profile a few more steps "
                    "of each to get the share of the step spent outside convolutions.")
    p.add_argument("--batch", type=_batches, default=None,
                   help=f"comma-separated batch sizes (default {DEFAULT_STEP_BATCHES})")
    p.add_argument("--sparsity", type=_sparsities,
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
    """``python -m sparseprop.bench --resnet18`` (``argv``: the arguments after ``--resnet18``)."""
    parser = build_resnet18_parser()
    args = parser.parse_args(argv)
    batches = args.batch or _batches(QUICK_STEP_BATCHES if args.quick else DEFAULT_STEP_BATCHES)
    sparsities = args.sparsity or _sparsities(QUICK_STEP_SPARSITIES if args.quick
                                              else DEFAULT_STEP_SPARSITIES)
    reps, warmup, threads = _run_options(args, quick_reps=2)
    profile_steps = args.profile_steps if args.profile_steps is not None else (1 if args.quick else 2)
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
        return resnet.run_steps(args, batches, sparsities, reps, warmup, profile_steps)

"""The main job: train the same model dense and sparse on scikit-learn's digits, and compare.

``python -m sparseprop`` (or the ``sparseprop`` console script) needs no arguments. It trains
an MLP on scikit-learn's digits dense, then again from the same initialization and with the
same batch order under gradual magnitude pruning to 95% of its hidden-to-hidden weights. The
pruner swaps a layer for SparseLinear as soon as the sparse kernels pay for its shape and
batch on this machine (``sparse_from="auto"``: measured once, cached), so most of the run
is on the sparse kernels. It prints test accuracy, time per epoch, speedup, parameter memory and a
per-layer sparsity table; ``--plot FILE.png`` also draws the curves.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from . import empty_cache, pruning, set_num_threads, summary
from .demo_report import (Progress, RunLog, describe, report, require_matplotlib, rss_bytes,
                          save_plot)

ALGORITHMS = {
    "gmp": "gradual magnitude pruning (Zhu & Gupta 2017) from dense, done by 40% of training",
    "magnitude": "one-shot magnitude pruning at initialization",
    "random-erk": "random pruning at initialization, ERK densities (equal for equal shapes)",
    "snip": "SNIP at initialization (connection sensitivity on one batch)",
    "synflow": "SynFlow at initialization (data-free, 5 rounds)",
    "acdc": "AC/DC: dense first epoch, then sparse/dense epochs, the last quarter sparse",
    "rigl": "RigL: random sparse start, drop-and-regrow by gradient until 75% of training",
    "granet": "GraNet: gradual magnitude pruning with regrowth, done by 40% of training",
    "imp": "iterative magnitude pruning with rewinding (lottery tickets), 3 rounds",
}
# Pruned at initialization: their kept weights are rescaled (see rescale_kept).
AT_INIT = ("magnitude", "random-erk", "snip", "synflow", "rigl")
# --model: (number of hidden-to-hidden layers, default width).
MODELS = {"mlp": (1, 4096), "deep-mlp": (3, 2048)}
SPARSE_FROM = "auto"  # each layer switches where its sparse step gets cheaper than dense


# --- arguments --------------------------------------------------------------------------
def _sparsity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1) (a fraction of zero weights), "
                                         f"got {text}")
    return value


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    module = os.path.basename(sys.argv[0]) == "__main__.py"  # python -m sparseprop
    p = argparse.ArgumentParser(
        prog="python -m sparseprop" if module else "sparseprop",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\nalgorithms:\n" + "\n".join(
            f"  {name:<11} {text}" for name, text in ALGORITHMS.items()))
    p.add_argument("--algorithm", choices=list(ALGORITHMS), default="gmp", help="default: gmp")
    p.add_argument("--sparsity", type=_sparsity, default=0.95,
                   help="final sparsity of the hidden-to-hidden layers, in (0, 1) (default 0.95; "
                        "below a layer's switch point, about 0.5-0.7, it stays masked dense)")
    p.add_argument("--model", choices=list(MODELS), default="mlp",
                   help="mlp: 64-H-H-10; deep-mlp: 64-H-H-H-H-10 (default mlp)")
    p.add_argument("--hidden", type=_positive(int), default=None,
                   help="hidden width H (default 4096 for mlp, 2048 for deep-mlp)")
    p.add_argument("--epochs", type=_positive(int), default=8, help="default 8")
    p.add_argument("--batch-size", type=_positive(int), default=128, help="default 128")
    p.add_argument("--lr", type=_positive(float), default=1e-3,
                   help="AdamW learning rate (default 1e-3)")
    p.add_argument("--threads", type=_positive(int), default=None,
                   help="threads for torch and sparseprop (default: torch's default)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds initialization, batch order and pruner (default 0)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="save accuracy and time per epoch curves (needs matplotlib)")
    p.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                   help="no progress bars or per-epoch lines (the final tables still print)")
    return p


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.hidden is None:
        args.hidden = MODELS[args.model][1]
    if args.plot is not None:
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            parser.error(f"--plot: directory {folder} does not exist")
        require_matplotlib()
    return args


# --- data and model ---------------------------------------------------------------------
def load_digits_split(seed: int) -> Tuple[torch.Tensor, ...]:
    """scikit-learn's 8x8 digits (ships with it, no download): 80% train, 20% test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit("the demo needs scikit-learn: pip install 'sparseprop[demo]'") from None
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    n_test = len(y) // 5
    return x[n_test:], y[n_test:], x[:n_test], y[:n_test]


def build_model(name: str, n_in: int, hidden: int, n_out: int) -> Tuple[nn.Sequential, List[str]]:
    """The model and the names of its hidden-to-hidden layers (the ones pruned)."""
    layers: List[nn.Module] = [nn.Linear(n_in, hidden), nn.ReLU()]
    for _ in range(MODELS[name][0]):
        layers += [nn.Linear(hidden, hidden), nn.ReLU()]
    layers.append(nn.Linear(hidden, n_out))
    model = nn.Sequential(*layers)
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return model, linear[1:-1]


# --- pruning ----------------------------------------------------------------------------
def make_pruner(args, model: nn.Module, opt, names: List[str], x_train, y_train,
                steps: int) -> pruning.Pruner:
    """The pruner for ``args.algorithm``, its schedule scaled to ``args.epochs`` epochs of
    ``steps`` optimizer steps. Few mask updates: each one ranks every weight of a layer."""
    s, name, total = args.sparsity, args.algorithm, args.epochs * steps
    # Below its switch point a layer stays a masked dense layer (there dense is faster).
    kw = dict(layers=names, sparse_from=SPARSE_FROM, seed=args.seed)

    def at(fraction: float, minimum: int = 1) -> int:
        return max(minimum, round(fraction * total))

    if name in ("gmp", "granet"):
        # 6 updates, the last at ~40% of training: most epochs run at the final sparsity.
        freq = at(0.4 / 6)
        cls = pruning.GradualMagnitudePruner if name == "gmp" else pruning.GraNetPruner
        return cls(model, opt, sparsity=s, end_step=min(6 * freq, total), frequency=freq,
                   **kw)
    if name == "magnitude":
        return pruning.MagnitudePruner(model, opt, sparsity=s, **kw)
    if name == "random-erk":
        return pruning.RandomPruner(model, opt, sparsity=s, allocation="erk", **kw)
    if name == "snip":
        n = args.batch_size  # the first training batch (no random draw: same data every run)
        return pruning.SNIPPruner(model, opt, sparsity=s, inputs=x_train[:n],
                                  targets=y_train[:n], **kw)
    if name == "synflow":
        # 5 rounds, not the paper's 100: each round copies the model in float64.
        return pruning.SynFlowPruner(model, opt, sparsity=s, example_input=x_train[:1],
                                     iterations=5, **kw)
    if name == "acdc":
        # Phases of whole epochs: dense first epoch, then sparse/dense, the last quarter sparse.
        final = max(1, round(0.25 * args.epochs))
        return pruning.ACDCPruner(model, opt, sparsity=s, total=args.epochs,
                                  warmup=min(1, args.epochs - final), sparse_length=1,
                                  dense_length=1, final_sparse_length=final, unit="epoch", **kw)
    if name == "rigl":
        end = at(0.75)  # RigL stops updating the masks at 75% of training
        return pruning.RigLPruner(model, opt, sparsity=s, end_step=end,
                                  frequency=max(1, end // 5), **kw)
    if name == "imp":
        rounds = min(3, max(1, args.epochs - 1))
        length = max(1, total // (rounds + 1))  # the last round-length trains the final ticket
        return pruning.IterativeMagnitudePruner(model, opt, sparsity=s, rounds=rounds,
                                                round_length=length,
                                                rewind_step=min(length - 1, at(0.05, 0)), **kw)
    raise ValueError(f"unknown algorithm {name!r}")


def rescale_kept(pruner: pruning.Pruner, norms: Dict[str, torch.Tensor]) -> None:
    """Give each layer pruned at initialization its initial Frobenius norm back (about
    1/sqrt(density) for random pruning), so units keep the activation scale of their full
    fan-in; otherwise a 95%-sparse net starts with vanishing activations and learns slowly.
    Pruning during training (GMP, AC/DC, IMP, GraNet) removes small trained weights and
    needs no such correction."""
    with torch.no_grad():
        for name, layer in pruner.layers.items():
            kept = layer.weight().norm()
            if kept > 0:
                layer.parameters()[0].mul_(norms[name] / kept)


# --- training ---------------------------------------------------------------------------
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train()
    return 100.0 * correct


def train(model: nn.Module, opt, pruner: Optional[pruning.Pruner], data, args, log: RunLog,
          progress: Progress) -> None:
    """Train ``model`` for ``args.epochs``; the batch order depends on ``args.seed`` only, so
    both runs see the same batches. The run's clock (``log.clock``) starts with the pruner's
    setup (``log.setup``) and leaves evaluation out, as ``log.total`` does."""
    x_train, y_train, x_test, y_test = data
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(args.seed)
    n, bs = len(y_train), args.batch_size
    steps = (n + bs - 1) // bs
    for epoch in range(args.epochs):
        progress.start(log.label, epoch, args.epochs)
        order = torch.randperm(n, generator=gen)
        on_sparse = 0
        start = time.perf_counter()
        if pruner is not None and epoch > 0:  # pruners scheduled in epochs (AC/DC)
            log.time_update(pruner.epoch_step)
        for step in range(steps):
            if pruner is not None:
                on_sparse += all(not layer.is_dense for layer in pruner.layers.values())
            idx = order[step * bs:(step + 1) * bs]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            log.peak_rss = max(log.peak_rss, rss_bytes())  # gradients are live: the step's peak
            opt.step()
            if pruner is not None:  # after the optimizer step: prunes, regrows, switches form
                log.time_update(pruner.step)
            log.clock.append(log.setup + sum(log.times) + time.perf_counter() - start)
            log.losses.append(loss.item())
            progress.step(step + 1, steps, log.losses[-1])
        log.times.append(time.perf_counter() - start)
        log.accs.append(accuracy(model, x_test, y_test))
        log.on_sparse.append(on_sparse / steps)
        log.sparsity.append(pruner.sparsity() if pruner is not None else 0.0)
        text = f"test acc {log.accs[-1]:5.1f}%  {log.times[-1]:6.2f}s"
        if pruner is not None:
            text += (f"  sparsity {log.sparsity[-1]:6.1%}, "
                     f"sparse kernels {log.on_sparse[-1]:4.0%} of steps")
        progress.end(loss.item(), text)
    stats = summary(model).totals
    log.param_bytes = stats["bytes"] + stats["other_bytes"]


# --- the job ----------------------------------------------------------------------------
def run(args: argparse.Namespace) -> Tuple[RunLog, RunLog, nn.Module, List[str]]:
    """Train dense and sparse; return both logs, the sparse model and the pruned layer names."""
    if args.threads:
        torch.set_num_threads(args.threads)
        set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = load_digits_split(args.seed)
    torch.manual_seed(args.seed)
    dense_log, sparse_log = RunLog("dense"), RunLog(f"sparse ({args.algorithm})")
    dense_log.base_rss = rss_bytes()
    dense, names = build_model(args.model, data[0].shape[1], args.hidden, 10)
    print(describe(args, data, dense, names, ALGORITHMS[args.algorithm]), flush=True)
    progress = Progress(enabled=not args.quiet, label_width=len(sparse_log.label))
    opt = torch.optim.AdamW(dense.parameters(), lr=args.lr, weight_decay=1e-4)
    train(dense, opt, None, data, args, dense_log, progress)
    del dense, opt  # each run's peak RSS counts its own model only
    gc.collect()
    empty_cache()  # and hands the freed pages back to the OS, so both runs start level

    torch.manual_seed(args.seed)  # the same initialization again, without keeping a copy
    sparse_log.base_rss = rss_bytes()
    sparse, _ = build_model(args.model, data[0].shape[1], args.hidden, 10)
    opt = torch.optim.AdamW(sparse.parameters(), lr=args.lr, weight_decay=1e-4)
    norms = {n: sparse.get_submodule(n).weight.detach().norm() for n in names}
    steps = (len(data[1]) + args.batch_size - 1) // args.batch_size
    start = time.perf_counter()
    pruner = make_pruner(args, sparse, opt, names, data[0], data[1], steps)
    if args.algorithm in AT_INIT:
        rescale_kept(pruner, norms)
    sparse_log.setup = time.perf_counter() - start
    progress.note(f"{sparse_log.label}: pruner set up in {sparse_log.setup:.2f}s, "
                  f"pruned layers now {pruner.sparsity():.1%} sparse")
    train(sparse, opt, pruner, data, args, sparse_log, progress)
    pruner.remove()
    return dense_log, sparse_log, sparse, names


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    dense_log, sparse_log, sparse_model, names = run(args)
    print(report(args, dense_log, sparse_log, sparse_model, names))
    if args.plot:
        title = (f"digits, {args.model} H={args.hidden}: dense vs {args.algorithm} "
                 f"at {args.sparsity:.0%}")
        save_plot(args.plot, dense_log, sparse_log, title)
        print(f"\nplot saved to {args.plot}")
    return 0

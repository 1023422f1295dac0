"""Output of the main job (``python -m sparseprop``): progress bars, the result tables and
the optional plot. Kept apart from :mod:`sparseprop.demo`, which does the training."""
from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import IO, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ._backend import get_isa, get_num_threads
from ._tables import Table, fmt_bytes, shape_str
from .convert import summary


@dataclass
class RunLog:
    """What one training run measured, one entry per epoch."""

    label: str
    accs: List[float] = field(default_factory=list)       # test accuracy (%) after the epoch
    times: List[float] = field(default_factory=list)      # training wall time (s), no evaluation
    on_sparse: List[float] = field(default_factory=list)  # fraction of steps on the sparse kernels
    sparsity: List[float] = field(default_factory=list)   # sparsity of the pruned layers
    setup: float = 0.0  # pruning before the first step (at-initialization algorithms)
    param_bytes: int = 0
    clock: List[float] = field(default_factory=list)  # wall time (s) since the run began, per step
    losses: List[float] = field(default_factory=list)  # training loss, per step
    peak_rss: int = 0  # highest resident memory (bytes) sampled after a backward pass
    base_rss: int = 0  # resident memory just before the run built its model
    updates: List[float] = field(default_factory=list)  # wall time (s) of each mask change

    def time_update(self, pruner_step) -> None:
        """Run ``pruner_step`` (a pruner's ``step`` or ``epoch_step``); if it changed a
        mask, record how long that took."""
        start = time.perf_counter()
        if pruner_step():
            self.updates.append(time.perf_counter() - start)

    def median_step(self) -> float:
        """Median wall time (s) of one training step (the clock's increments)."""
        steps = [b - a for a, b in zip([self.setup] + self.clock[:-1], self.clock)]
        return statistics.median(steps) if steps else 0.0

    @property
    def total(self) -> float:
        return self.setup + sum(self.times)

    def sparse_epochs(self) -> List[int]:
        """Epochs whose every step ran with all pruned layers on the sparse kernels."""
        return [i for i, f in enumerate(self.on_sparse) if f >= 1.0]


# --- progress ---------------------------------------------------------------------------
class Progress:
    """Progress on stderr: a bar redrawn in place on a terminal; elsewhere (CI logs, pipes)
    only one line per finished epoch, so logs stay readable. ``enabled=False``: silent."""

    width = 24

    def __init__(self, enabled: bool = True, stream: Optional[IO[str]] = None,
                 label_width: int = 6) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.label_width = label_width
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.tty = enabled and callable(isatty) and isatty()
        self.prefix = ""

    def start(self, label: str, epoch: int, epochs: int) -> None:
        self.prefix = f"{label:>{self.label_width}} epoch {epoch + 1:>{len(str(epochs))}}/{epochs}"

    def step(self, done: int, steps: int, loss: float) -> None:
        if not self.tty:
            return
        filled = self.width * done // steps
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.prefix} [{bar}] loss {loss:.3f}")
        self.stream.flush()

    def note(self, text: str) -> None:
        if self.enabled:
            self.stream.write(text + "\n")
            self.stream.flush()

    def end(self, loss: float, text: str) -> None:
        if not self.enabled:
            return
        start = "\r" if self.tty else ""
        self.stream.write(f"{start}{self.prefix} [{'#' * self.width}] loss {loss:.3f}  {text}\n")
        self.stream.flush()


# --- tables -----------------------------------------------------------------------------
def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def epoch_times(dense: RunLog, sparse: RunLog) -> Tuple[float, float, str]:
    """Median s/epoch of each run and a sentence saying which epochs were counted."""
    kept = sparse.sparse_epochs()
    epochs = len(sparse.times)
    if kept:
        which = (f"dense: all {len(dense.times)} epochs; sparse: the {len(kept)} of {epochs} "
                 f"epochs run entirely on the sparse kernels")
        return median(dense.times), median([sparse.times[i] for i in kept]), which
    which = (f"all {epochs} epochs of both runs (no epoch of the sparse run was entirely on "
             f"the sparse kernels)")
    return median(dense.times), median(sparse.times), which


def rss_bytes() -> int:
    """The process's resident memory now (0 where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):  # pragma: no cover - not Linux
        return 0


def results_table(dense: RunLog, sparse: RunLog) -> str:
    d_t, s_t, which = epoch_times(dense, sparse)
    headers = ("run", "test acc", "s/epoch", "speedup", "total s", "end to end", "peak RSS",
               "run's own", "parameters", "")
    rows = []
    for log, t in ((dense, d_t), (sparse, s_t)):
        smaller = f"{dense.param_bytes / log.param_bytes:.1f}x smaller" if log is sparse else ""
        rss = fmt_bytes(log.peak_rss) if log.peak_rss else "n/a"
        own = fmt_bytes(log.peak_rss - log.base_rss) if log.peak_rss and log.base_rss else "n/a"
        rows.append((log.label, f"{log.accs[-1]:.1f}%", f"{t:.3f}", f"{d_t / t:.2f}x",
                     f"{log.total:.1f}", f"{dense.total / log.total:.2f}x", rss, own,
                     fmt_bytes(log.param_bytes), smaller))
    table = Table(headers, "lrrrrrrrrl").text(rows)
    notes = [
        f"s/epoch: median training time per epoch ({which}); speedup = dense s/epoch / s/epoch.",
        f"total s: the whole run's training time, pruning (also at initialization) and any dense "
        f"phase included (end to end {dense.total / sparse.total:.2f}x); evaluation excluded.",
        "end to end = dense total s / total s: what a user timing the whole run sees.",
        "peak RSS: the process's highest resident memory sampled after each backward pass of "
        "the run (the other run's model is freed first); run's own: peak RSS minus the "
        "resident memory just before the run built its model (what the run itself added: "
        "model, optimizer state, activations, pruning; not what the process kept from "
        "earlier, e.g. library code first touched by the dense run).",
        "parameters: parameters + sparse pattern buffers (indptr, indices), as "
        "sparseprop.summary counts them.",
    ]
    return table + "\n" + "\n".join(notes)


def layers_table(model: nn.Module, pruned: Sequence[str], why_dense: dict) -> str:
    """Per-layer type, shape, nonzeros and sparsity of ``model`` (sparseprop.summary)."""
    rows = []
    for r in summary(model):
        why = why_dense.get(r["layer"], "excluded")
        note = "pruned" if r["layer"] in pruned else f"not pruned ({why})"
        rows.append((r["layer"], r["type"], shape_str(r["shape"]), r["nnz"],
                     f"{r['sparsity']:.1%}", fmt_bytes(r["bytes"]), note))
    headers = ("layer", "type", "shape", "nnz", "sparsity", "memory", "")
    return Table(headers, "lllrrrl").text(rows)


def describe(args, data, model: nn.Module, names: List[str], algorithm: str) -> str:
    """The header: machine, data, model, algorithm and training setup."""
    widths = [m.in_features for m in model if isinstance(m, nn.Linear)] + [10]
    params = sum(p.numel() for p in model.parameters())
    pruned = sum(model.get_submodule(n).weight.numel() for n in names)
    steps = (len(data[1]) + args.batch_size - 1) // args.batch_size
    layers = (f"the {len(names)} hidden-to-hidden layers" if len(names) > 1
              else "the hidden-to-hidden layer")
    return "\n".join([
        f"sparseprop: ISA {get_isa()}, {get_num_threads()} threads "
        f"(torch {torch.get_num_threads()})",
        f"data: scikit-learn digits, 8x8 = 64 features, {len(data[1])} train / {len(data[3])} test",
        f"model: {args.model} {'-'.join(map(str, widths))}, {params / 1e6:.2f}M parameters",
        f"sparse run: {args.algorithm}: {algorithm}; to {args.sparsity:.0%} in "
        f"{layers} ({pruned / params:.1%} of the weights); the small input and output "
        f"layers stay dense",
        f"training: {args.epochs} epochs x {steps} steps of {args.batch_size}, "
        f"AdamW lr {args.lr:g}, seed {args.seed}; both runs from the same initialization "
        f"and batch order",
    ])


def report(args, dense_log: RunLog, sparse_log: RunLog, model: nn.Sequential,
           names: List[str]) -> str:
    """The final tables: results of both runs, then the sparse model layer by layer."""
    why = {"0": "input layer", str(len(model) - 1): "output layer"}
    return "\n".join([f"\nresults after {args.epochs} epochs", results_table(dense_log, sparse_log),
                      updates_line(dense_log, sparse_log),
                      "\nper-layer sparsity of the sparse model", layers_table(model, names, why)])


def updates_line(dense_log: RunLog, sparse_log: RunLog) -> str:
    """The sparse run's mask changes during training, against a dense step of this process."""
    if not sparse_log.updates:
        return f"mask changes during training: none (pruned at set-up, {sparse_log.setup:.2f} s)"
    step = dense_log.median_step()
    slowest = max(sparse_log.updates)
    text = (f"mask changes during training: {len(sparse_log.updates)}, "
            f"{sum(sparse_log.updates):.2f} s in all; the slowest {1e3 * slowest:.0f} ms")
    if step > 0:
        text += f" = {slowest / step:.2f}x a dense training step ({1e3 * step:.0f} ms, median)"
    return text + " (included in total s)"


# --- plot -------------------------------------------------------------------------------
def require_matplotlib() -> None:
    """Fail before training, not after, if --plot cannot work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("--plot needs matplotlib, which is not installed: "
                         "pip install matplotlib  (or pip install 'sparseprop[plot]')") from None


def save_plot(path: str, dense: RunLog, sparse: RunLog, title: str) -> None:
    """Two panels on one wall-clock axis (seconds since each run began, pruning included):
    training loss per step, and test accuracy at each epoch's end, so the faster run's
    curves end earlier (the sparse run's sparsity on a second axis)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    for log, style in ((dense, "-"), (sparse, "-")):
        line, = ax_loss.plot(log.clock, log.losses, style, label=f"{log.label} ({log.total:.1f} s)")
        ends = [log.setup + sum(log.times[:i + 1]) for i in range(len(log.times))]
        ax_acc.plot(ends, log.accs, "o-", color=line.get_color(), label=log.label)
    ax_loss.set(xlabel="wall time (s)", ylabel="training loss", title="loss", yscale="log")
    ax_acc.set(xlabel="wall time (s)", ylabel="test accuracy (%)", title="accuracy")
    ax_sparsity = ax_acc.twinx()
    ends = [sparse.setup + sum(sparse.times[:i + 1]) for i in range(len(sparse.times))]
    ax_sparsity.plot(ends, [100 * s for s in sparse.sparsity], ":", color="gray",
                     label=f"{sparse.label} sparsity")
    ax_sparsity.set(ylabel="sparsity of pruned layers (%)", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.set_xlim(0, None)
    ax_loss.legend(loc="upper right")
    lines = ax_acc.get_legend_handles_labels()
    extra = ax_sparsity.get_legend_handles_labels()
    ax_acc.legend(lines[0] + extra[0], lines[1] + extra[1], loc="center right", framealpha=0.9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)

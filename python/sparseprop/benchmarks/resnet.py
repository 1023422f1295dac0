"""One whole SGD training step of a CIFAR ResNet-18, dense vs sparse convolutions
(``python -m sparseprop.bench --resnet18``).

The model is :func:`.resnet_models.resnet18_cifar` (train mode, synthetic 32x32 batch,
fixed across steps); a step is ``zero_grad(set_to_none=True)``, forward,
cross-entropy, backward, ``SGD(lr, momentum=0.9).step()``. The sparse model has every
convolution except the stem (``conv1``) converted with ``SparseConv2d.from_dense(conv,
sparsity=s)`` (:func:`.resnet_models.sparsify_convs`); the dense model is its copy with
every ``SparseConv2d`` replaced by ``to_dense()`` (:func:`sparseprop.densify`), so both
compute the same function. Whole steps are timed interleaved, medians.

Then the share of the step spent *outside* convolutions (BatchNorm, ReLU, residual
adds, pooling, the linear layer, the loss, gradient accumulation, the optimizer) is
measured with ``torch.profiler`` on a few further steps of each model
(:func:`.resnet_profile.profile_step`). ``--ops N`` prints the N ops with the most self
time in the sparse model's step next to the dense model's
(:func:`.resnet_profile.op_self_ms`). Peak resident memory of each model is measured
in a fresh process per model (:mod:`.resnet_rss`; ``--rss-steps``, 0 skips).
``--gmp-steps N`` adds a prune-from-dense run (:mod:`.resnet_gmp`): N steps of the
dense ResNet-18 under ``GradualMagnitudePruner`` to ``--gmp-sparsity`` against N plain
dense steps, whole-run wall time, mask updates and layer swaps included.
"""
from __future__ import annotations

import copy
import gc
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from typing import Callable, List, Optional

import torch
from torch import nn
import torch.nn.functional as F

import sparseprop
from sparseprop import SparseConv2d
from .._tables import Table, fmt_ms, fmt_pct, fmt_x
from .._timing import medians_ms, time_interleaved_samples
from .checks import rel_err
from .output import print_header, write_rows_csv
from .passes import ratio
from .resnet_gmp import GMP_TABLE, gmp_cells, gmp_vs_dense
from .resnet_models import count_params, resnet18_cifar, sparsify_convs
from .resnet_profile import op_self_ms, ops_table_lines, profile_step
from .resnet_rss import peak_rss_mib


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
    dense_rss_mib: float = float("nan")   # peak RSS of a fresh process training it (see resnet_rss)
    sparse_rss_mib: float = float("nan")

    @property
    def step_x(self) -> float:
        return ratio(self.dense_step_ms, self.sparse_step_ms)

    @property
    def dense_other_ms(self) -> float:
        return self.dense_prof_step_ms - self.dense_conv_ms

    @property
    def sparse_other_ms(self) -> float:
        return self.sparse_prof_step_ms - self.sparse_conv_ms - self.sparse_stem_ms

    @property
    def dense_other_share(self) -> float:
        return ratio(self.dense_other_ms, self.dense_prof_step_ms)

    @property
    def sparse_other_share(self) -> float:
        return ratio(self.sparse_other_ms, self.sparse_prof_step_ms)

    @property
    def bound_x(self) -> float:
        """Step speedup if the sparsified convolutions took no time at all (everything
        else as in the dense model, the stem as measured in the sparse one): the
        Amdahl limit that the non-convolution work puts on this network."""
        return ratio(self.dense_prof_step_ms, self.dense_other_ms + self.sparse_stem_ms)

    def row(self) -> dict:
        d = asdict(self)
        d.update(step_speedup=self.step_x, dense_other_ms=self.dense_other_ms,
                 sparse_other_ms=self.sparse_other_ms, dense_other_share=self.dense_other_share,
                 sparse_other_share=self.sparse_other_share, convs_free_speedup=self.bound_x)
        return d


STEP_TABLE = Table(["batch", "sparsity", "dense step ms", "sparse step ms", "step x",
                    "dense outside-conv %", "sparse outside-conv %", "convs-free x",
                    "dense peak MiB", "sparse peak MiB"], "r" * 10,
                   [5, 8, 13, 14, 6, 20, 21, 12, 14, 15])
BREAKDOWN_TABLE = Table(["model", "batch", "profiled step ms", "dense conv ms", "sparse conv ms",
                         "outside-conv ms", "outside-conv %"], "l" + "r" * 6,
                        [12, 5, 16, 13, 14, 15, 14])


def _ms_or_na(v: float) -> str:
    return "n/a" if math.isnan(v) else fmt_ms(v)


def _mib(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.0f}"


def step_cells(r: StepResult) -> List[str]:
    return [str(r.batch), f"{r.sparsity:g}", fmt_ms(r.dense_step_ms), fmt_ms(r.sparse_step_ms),
            fmt_x(r.step_x), fmt_pct(r.dense_other_share), fmt_pct(r.sparse_other_share),
            "n/a" if math.isnan(r.bound_x) else fmt_x(r.bound_x), _mib(r.dense_rss_mib),
            _mib(r.sparse_rss_mib)]


def breakdown_cells(r: StepResult) -> List[List[str]]:
    return [["dense", str(r.batch), _ms_or_na(r.dense_prof_step_ms), _ms_or_na(r.dense_conv_ms), "-",
             _ms_or_na(r.dense_other_ms), fmt_pct(r.dense_other_share)],
            [f"sparse {r.sparsity:g}", str(r.batch), _ms_or_na(r.sparse_prof_step_ms),
             _ms_or_na(r.sparse_stem_ms), _ms_or_na(r.sparse_conv_ms), _ms_or_na(r.sparse_other_ms),
             fmt_pct(r.sparse_other_share)]]


def bench_resnet18_step(base: nn.Module, sparsity: float, batch: int, *, reps: Optional[int],
                        warmup: int, target_time: float, profile_steps: int, lr: float = 0.01,
                        seed: int = 0, check: bool = True, min_reps: int = 5,
                        max_reps: int = 20, num_classes: int = 10, rss_steps: int = 0,
                        ops: int = 0, out=None) -> StepResult:
    """Dense vs sparse training step of (a copy of) ``base`` at ``sparsity``."""
    sparse = sparsify_convs(copy.deepcopy(base), sparsity, skip=("conv1",)).train()
    dense = sparseprop.densify(copy.deepcopy(sparse)).train()
    sparse_layers = [m for m in sparse.modules() if isinstance(m, SparseConv2d)]
    gen = torch.Generator().manual_seed(seed + 7919 * batch)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    target = torch.randint(0, num_classes, (batch,), generator=gen)

    err = float("nan")
    if check:
        with torch.no_grad():  # train mode: BN uses batch statistics in both
            err = rel_err(dense(x), sparse(x))

    dense_step = make_train_step(dense, x, target, lr)
    sparse_step = make_train_step(sparse, x, target, lr)
    s = time_interleaved_samples([dense_step, sparse_step], reps, warmup, min_reps=min_reps,
                                 max_reps=max_reps, target_time=target_time)
    dense_ms, sparse_ms = medians_ms(s)

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


def run_steps(args, batches, sparsities, reps, warmup, profile_steps) -> int:
    """Every (batch, sparsity), row by row, the profiled breakdown, the ``--gmp-steps``
    run, then the markdown tables and CSV that ``args`` asks for."""
    out = sys.stdout
    progress = sys.stderr if args.markdown else sys.stdout
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
        torch.manual_seed(args.seed)
        base = resnet18_cifar(num_classes=10)
    what = (f"ResNet-18 (CIFAR, 32x32, 10 classes), one training step: zero_grad, forward, "
            f"cross-entropy, backward, SGD(lr={args.lr:g}, momentum=0.9).step(); sparse = every "
            f"conv but the stem is a SparseConv2d; dense = the same masked model with nn.Conv2d")
    print_header(out, args.markdown, [f"model:      {what}"], table_header=STEP_TABLE.header())

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
            print(prefix + STEP_TABLE.row(step_cells(r)), file=progress)
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
        f"{profile_steps} more step(s) per model (see sparseprop.benchmarks.resnet_profile.profile_step)",
        "convs-free x: dense step / (dense outside-conv + stem conv time): the step speedup if "
        "the sparsified convolutions cost nothing",
        f"peak MiB: peak RSS of a fresh process building that model and training it "
        f"{args.rss_steps} step(s) (sparseprop.benchmarks.resnet_rss; n/a with --rss-steps 0)",
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
            print("\nprofiled steps (ms per step; dense conv ms of the sparse model = the stem):",
                  file=out)
            print(BREAKDOWN_TABLE.header(), file=out)
            for r in results:
                for cells in breakdown_cells(r):
                    print(BREAKDOWN_TABLE.row(cells), file=out)
        print("\n" + "\n".join(notes), file=out)
    if gmp is not None:
        print(file=out)
        if args.markdown:
            print(GMP_TABLE.markdown([gmp_cells(gmp)]), file=out)
        else:
            print(GMP_TABLE.header(), file=out)
            print(GMP_TABLE.row(gmp_cells(gmp)), file=out)
        print("end-to-end x: dense run / GMP run, whole runs (one fixed synthetic batch; GMP's "
              "mask updates, masked-dense steps and layer swaps included)", file=out)
    print(f"\n{len(results)} configuration(s) in {elapsed:.1f} s",
          file=sys.stderr if args.markdown else out)
    if args.csv:
        write_rows_csv(args.csv, [r.row() for r in results], [f.name for f in fields(StepResult)])
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0

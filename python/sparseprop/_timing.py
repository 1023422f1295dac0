"""The one timer: interleaved, warmed-up repetitions, medians; and the timed items of a
layer's forward, backward and forward+backward passes.

Used by the benchmarks (``sparseprop.benchmarks``) and by ``sparsify(only_if_faster=True)``,
so a conversion decision and a benchmark table measure the same way. It lives in the
bottom layer (it imports nothing from the package) so that ``convert`` can use it
without depending on the benchmarks.

A timed item is a callable run in the timed region, or a ``(setup, run)`` pair whose
``setup()`` runs untimed just before and whose result is passed to ``run``.
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple, Union

Timed = Union[Callable[[], object], Tuple[Callable[[], object], Callable[[object], object]]]


def time_interleaved_samples(fns: Sequence[Timed], reps: Optional[int] = None, warmup: int = 2, *,
                             min_reps: int = 5, max_reps: int = 50,
                             target_time: float = 0.2) -> List[List[float]]:
    """Per-repetition times (seconds) of each item of ``fns``, measured interleaved.

    Every repetition runs each item once; the starting item rotates from one
    repetition to the next, so no item always runs first (slow drifts of the
    machine hit all items alike). ``warmup`` untimed repetitions come first. With
    ``reps`` given exactly that many repetitions are timed; with ``reps=None``
    repetitions go on until the items have used ``target_time`` seconds each on
    average (i.e. ``target_time * len(fns)`` in all), at least ``min_reps`` and at
    most ``max_reps`` times. The cyclic garbage collector is paused while timing.
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


def medians_ms(samples: Sequence[Sequence[float]]) -> List[float]:
    """The median of each item's samples (seconds), in milliseconds."""
    return [statistics.median(s) * 1e3 for s in samples]


def as_call(item: Timed) -> Callable[[], object]:
    """One plain callable doing what ``item`` does, its setup included (for timers that
    take a bare callable, such as pytest-benchmark's)."""
    if not isinstance(item, tuple):
        return item
    setup, run = item
    return lambda: run(setup())


# ----------------------------------------------------------------------------------------
# the passes of one layer
# ----------------------------------------------------------------------------------------
class PassItems(NamedTuple):
    """Timed items of one layer on one input: ``fwd`` times ``y = layer(x)`` (autograd
    recording, as in training); ``bwd`` runs the forward untimed and times
    ``y.backward(grad)``; ``fwdbwd`` times both. Gradients of ``x`` and of the layer's
    trainable parameters are reset (``.grad = None``) untimed before each backward."""

    fwd: Timed
    bwd: Timed
    fwdbwd: Timed


def trainable_params(module) -> list:
    return [p for p in module.parameters() if p.requires_grad]


def pass_items(module, x, grad) -> PassItems:
    """The forward, backward and forward+backward items of ``module`` on ``x`` (the
    backward of the output with ``grad``)."""
    params = trainable_params(module)

    def zero():
        x.grad = None
        for p in params:
            p.grad = None

    def fwd():
        return module(x)  # the timer frees the output (and its graph) untimed

    def bwd_setup():
        zero()
        return module(x)

    def bwd(y):
        y.backward(grad, retain_graph=False)

    def fwdbwd(_):
        module(x).backward(grad, retain_graph=False)

    return PassItems(fwd, (bwd_setup, bwd), (zero, fwdbwd))

"""Where a training step's time goes, from ``torch.profiler``: convolution time against
everything else (:func:`profile_step`), and self time per op (:func:`op_self_ms`, ``--ops``)."""
from __future__ import annotations

import gc
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from sparseprop import SparseConv2d
from .._tables import Table

_FWD_DENSE = "sparseprop.bench::conv2d_forward"
_FWD_SPARSE = "sparseprop.bench::sparse_conv2d_forward"
_NODE = "autograd::engine::evaluate_function: "


def conv_kind(key: str) -> Optional[str]:
    """'dense' / 'sparse' for a profiler event that is a whole convolution forward or
    backward (outermost event only, so nothing is counted twice), else None."""
    if key == _FWD_DENSE:
        return "dense"
    if key == _FWD_SPARSE:
        return "sparse"
    if key.startswith(_NODE):
        node = key[len(_NODE):].lower()
        if "sparseconv2d" in node:  # SparseConv2dFn
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
    and its kernels show as the ``SparseConv2dFn`` entries."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return {e.key: e.self_cpu_time_total * 1e-3 / steps for e in prof.key_averages()}


def ops_table_lines(dense: Dict[str, float], sparse: Dict[str, float], top: int) -> List[str]:
    """The ``top`` ops by sparse-model self time, next to the dense model's time for the
    same op (ms per step), and the totals over all ops."""
    names = sorted(sparse, key=sparse.get, reverse=True)[:top]
    table = Table(["op", "sparse ms", "dense ms"], "lrr", [max([len(n) for n in names] + [10]), 10, 10])
    rows = [[n, f"{sparse[n]:.1f}", f"{dense.get(n, 0.0):.1f}"] for n in names]
    rows.append(["(all ops)", f"{sum(sparse.values()):.1f}", f"{sum(dense.values()):.1f}"])
    return [table.header()] + [table.row(r) for r in rows]


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
      ``...: SparseConv2dFnBackward`` for SparseConv2d), which computes the input and
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
        kind = conv_kind(e.key)
        if kind is not None:
            conv_us[kind] += e.cpu_time_total
    return total * 1e3 / steps, conv_us["dense"] * 1e-3 / steps, conv_us["sparse"] * 1e-3 / steps

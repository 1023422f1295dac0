"""SparseConv2d as torch.library custom ops, so torch.compile(fullgraph=True) and
torch.export see one opaque op per layer instead of a graph break.

``sparseprop::conv2d(x, values, bias, indptr, indices, spec) -> y`` runs the eager
native convolution; its backward op recomputes that forward with autograd on and
differentiates it, on a helper thread (the eager conv's autograd Function keeps
layouts and plans a custom op cannot return). So a compiled model costs one extra sparse forward per
backward next to eager; eager calls never come here. ``spec`` is the layer's
ConvSpec as a JSON string (custom op arguments are tensors and plain values).
torch.func transforms are not supported for convolutions.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import threading
from collections import OrderedDict
from typing import Optional, Tuple

import torch

from .. import custom_ops
from .. import linear_kernels as K
from .cache import PlanCache
from .entry import sparse_conv2d_spec
from .spec import ConvSpec, output_size

_lock = threading.Lock()
_specs: "OrderedDict[str, Tuple[ConvSpec, PlanCache]]" = OrderedDict()
_MAX_SPECS = 64


def spec_key(spec: ConvSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True)


def _spec_and_plans(key: str) -> Tuple[ConvSpec, PlanCache]:
    with _lock:
        entry = _specs.get(key)
        if entry is not None:
            _specs.move_to_end(key)
            return entry
    fields = json.loads(key)
    for name in ("kernel_size", "stride", "dilation"):
        fields[name] = tuple(fields[name])
    if not isinstance(fields["padding"], str):
        fields["padding"] = tuple(fields["padding"])
    entry = (ConvSpec(**fields), PlanCache())
    with _lock:
        _specs[key] = entry
        while len(_specs) > _MAX_SPECS:
            _specs.popitem(last=False)
    return entry


def _eager(x, values, bias, indptr, indices, spec: ConvSpec, plans: PlanCache):
    pattern = K.pattern_of(indptr, indices, spec.out_channels, spec.pattern_cols)
    return sparse_conv2d_spec(x, spec, pattern, values, bias, plans)


AVAILABLE = custom_ops.AVAILABLE
_worker: Optional[concurrent.futures.ThreadPoolExecutor] = None


def _with_autograd(fn, *args):
    """fn(*args) on a helper thread. An op's implementation runs with the autograd
    dispatch keys excluded (thread-local state), so the recomputed forward's padding,
    slicing and reshapes would not be recorded there; a thread starts clean."""
    global _worker
    with _lock:
        if _worker is None:
            _worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sparseprop-conv-op")
    return _worker.submit(fn, *args).result()


def _gradients(gy, x, values, bias, indptr, indices, s, plans):
    with torch.enable_grad():
        xs = x.detach().requires_grad_()
        vs = values.detach().requires_grad_()
        bs = None if bias is None else bias.detach().requires_grad_()
        y = _eager(xs, vs, bs, indptr, indices, s, plans)
        return torch.autograd.grad(y, (xs, vs) if bs is None else (xs, vs, bs), gy)


if AVAILABLE:

    @torch.library.custom_op("sparseprop::conv2d", mutates_args=())
    def conv2d(x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor],
               indptr: torch.Tensor, indices: torch.Tensor, spec: str) -> torch.Tensor:
        s, plans = _spec_and_plans(spec)
        with torch.no_grad():
            return _eager(x, values, bias, indptr, indices, s, plans).contiguous()

    @conv2d.register_fake
    def _(x, values, bias, indptr, indices, spec):
        s, _ = _spec_and_plans(spec)
        oh, ow = output_size(s, x.shape[-2], x.shape[-1], s.pads())
        lead = (x.shape[0],) if x.dim() == 4 else ()
        return x.new_empty(*lead, s.out_channels, oh, ow)

    @torch.library.custom_op("sparseprop::conv2d_backward", mutates_args=())
    def conv2d_backward(gy: torch.Tensor, x: torch.Tensor, values: torch.Tensor,
                        bias: Optional[torch.Tensor], indptr: torch.Tensor, indices: torch.Tensor,
                        spec: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dx, dvalues, dbias); dbias is empty without a bias."""
        s, plans = _spec_and_plans(spec)
        grads = _with_autograd(_gradients, gy, x, values, bias, indptr, indices, s, plans)
        gb = grads[2] if bias is not None else values.new_empty(0)
        return grads[0].contiguous(), grads[1].contiguous(), gb.contiguous()

    @conv2d_backward.register_fake
    def _(gy, x, values, bias, indptr, indices, spec):
        gb = values.new_empty(0) if bias is None else bias.new_empty(bias.shape)
        return x.new_empty(x.shape), values.new_empty(values.shape), gb

    def _setup_context(ctx, inputs, output):
        x, values, bias, indptr, indices, spec = inputs
        ctx.spec = spec
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x, values, bias, indptr, indices)

    def _backward(ctx, gy):
        x, values, bias, indptr, indices = ctx.saved_tensors
        gx, gv, gb = conv2d_backward(gy.contiguous(), x, values, bias if ctx.has_bias else None,
                                     indptr, indices, ctx.spec)
        need_x, need_v, need_b = ctx.needs_input_grad[:3]
        return (gx if need_x else None, gv if need_v else None,
                gb if (need_b and ctx.has_bias) else None, None, None, None)

    conv2d.register_autograd(_backward, setup_context=_setup_context)

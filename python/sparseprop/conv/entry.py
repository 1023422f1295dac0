"""The one entry of a sparse convolution: check the call (spec.check_call), take the
plan for this input shape and layout from the cache (building it on a miss), and run it
through the autograd Function. SparseConv2d, the functional form, the dtype paths and
the custom op all come here."""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import torch
import torch.nn.functional as F

from ..csr import CSRPattern
from .batch import BatchPlan
from .cache import PlanCache
from .choice import pick_layout
from .chwn import is_chwn, subsample_chwn
from .function import SparseConv2dFn
from .spec import ConvSpec, check_call, output_size, spec_for_pattern
from .width import WidthPlan

PLAN_TYPES = {plan.layout: plan for plan in (BatchPlan, WidthPlan)}


def sparse_conv2d_spec(input: torch.Tensor, spec: ConvSpec, pattern: CSRPattern, values: torch.Tensor,
                       bias: Optional[torch.Tensor] = None,
                       plans: Optional[PlanCache] = None) -> torch.Tensor:
    """Convolution with a validated spec; ``plans`` caches index plans per input shape."""
    check_call(spec, input, pattern, values, bias)
    return run_conv2d(input, spec, pattern, values, bias, plans)


def run_conv2d(input: torch.Tensor, spec: ConvSpec, pattern: CSRPattern, values: torch.Tensor,
               bias: Optional[torch.Tensor], plans: Optional[PlanCache]) -> torch.Tensor:
    """:func:`sparse_conv2d_spec` on float32 arguments that passed ``check_call``."""
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    pads = spec.pads()
    if spec.padding_mode != "zeros" and any(pads):
        # Non-zero padding modes pad explicitly (differentiably), then convolve unpadded.
        t, b, l, r = pads
        x = F.pad(x, (l, r, t, b), mode=spec.padding_mode)
        pads = (0, 0, 0, 0)
    if spec.kernel_size == (1, 1) and pads == (0, 0, 0, 0) and spec.stride != (1, 1):
        # A strided 1x1 convolution reads only every stride-th pixel: subsample first
        # (autograd scatters the gradient back) instead of building unused phases.
        if is_chwn(x):
            x = subsample_chwn(x, *spec.stride)  # stays CHWN, gradient too
        else:
            x = x[:, :, ::spec.stride[0], ::spec.stride[1]]
        spec = dataclasses.replace(spec, stride=(1, 1))
    n, _, h, w = x.shape
    if n == 0:
        raise ValueError("SparseConv2d needs a non-empty batch")
    chwn = is_chwn(x)
    layout = pick_layout(spec, n, output_size(spec, h, w, pads)[1], chwn)
    build = functools.partial(PLAN_TYPES[layout].build, spec, pattern, n, h, w, pads, chwn)
    # The input's layout is part of the key: a batch plan reads (and returns dX) in it.
    plan = build() if plans is None else plans.get(pattern, (layout, n, h, w, pads, chwn), build)
    values = values.contiguous()
    bias = None if bias is None else bias.contiguous()
    xin = x.contiguous() if plan.needs_nchw and not x.is_contiguous() else x
    y = SparseConv2dFn.apply(xin, values, bias, pattern, plan)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)  # follow the input, like nn.Conv2d
    return y.squeeze(0) if unbatched else y


def sparse_conv2d(input: torch.Tensor, pattern: CSRPattern, values: torch.Tensor,
                  bias: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1,
                  groups: int = 1, kernel_size=None) -> torch.Tensor:
    """Functional sparse convolution. ``pattern`` is (out_channels, in_channels/groups*kH*kW);
    ``kernel_size`` defaults to square kernels inferred from the pattern and input."""
    spec = spec_for_pattern(input, pattern, stride, padding, dilation, groups, kernel_size)
    return sparse_conv2d_spec(input, spec, pattern, values, bias)

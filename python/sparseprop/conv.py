"""Sparse 2-D convolution on the CSR kernels: the module-facing entry points, the
choice between two data layouts, and the "batch" layout itself (the "width"
layout, native NCHW, is in conv_width.py).

Every pass is one of the two native kernels in their "offset" form: each
nonzero (o, c, kh, kw) becomes an element offset into a re-laid-out input. In
the batch layout the vector dimension runs over (output column, batch), batch
innermost:

* input  x (N, C, H, W) is padded and split into stride phases, stored as
  X' (C * sh * sw, Hs, Ws, N): phase channel (c, a % sh, b % sw) holds the
  padded input rows/cols congruent to (a, b). A stride-s convolution becomes a
  stride-1 one over the phases, so every tap reads a contiguous run.
* forward  Y[o, i, :, :] = bias[o] + sum_k w_k X'[c'_k, i + di_k, dj_k :, :]
  for each output row i (one "segment" of OW * N floats).
* weight gradient  dw_k = sum_i <dY[o, i], X'[c'_k, i + di_k, dj_k:]> (SDDMM).
* input gradient: the transposed pattern (rows = phase channels) gathers from a
  zero-bordered copy of dY, on the part of the phase grid that holds real pixels;
  then the phases are interleaved back.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import _C, _workspace
from ._backend import as_numpy, get_num_threads
from .conv_layout import (chwn_data, chwn_output, from_phases_chwn, is_chwn, padded_chwn,
                          phases_chwn, subsample_chwn)
from .conv_width import SparseConv2dWidthFn, WidthPlan
from .csr import CSRPattern
from ._validation import check_float32_cpu

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_MAX_CACHED_PLANS = 8
STRATEGIES = ("auto", "batch", "width")
_strategy = "auto"


def _pair(value, name: str, minimum: int) -> Tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    else:
        try:
            pair = tuple(value)
        except TypeError:
            pair = ()
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


@dataclass(frozen=True)
class ConvSpec:
    """Validated nn.Conv2d hyper-parameters."""

    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Union[str, Tuple[int, int]]
    dilation: Tuple[int, int]
    groups: int
    padding_mode: str

    @classmethod
    def create(cls, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
               padding_mode) -> "ConvSpec":
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels} and "
                             f"out_channels={out_channels}")
        kernel = _pair(kernel_size, "kernel_size", 1)
        stride_ = _pair(stride, "stride", 1)
        dilation_ = _pair(dilation, "dilation", 1)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got {padding!r}")
            if padding == "same" and stride_ != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            padding_ = padding
        else:
            padding_ = _pair(padding, "padding", 0)
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        return cls(in_channels, out_channels, kernel, stride_, padding_, dilation_, groups, padding_mode)

    def pads(self) -> Tuple[int, int, int, int]:
        """(top, bottom, left, right) zero padding."""
        if self.padding == "valid":
            return (0, 0, 0, 0)
        if self.padding == "same":
            th = self.dilation[0] * (self.kernel_size[0] - 1)
            tw = self.dilation[1] * (self.kernel_size[1] - 1)
            return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
        ph, pw = self.padding
        return (ph, ph, pw, pw)


@dataclass
class ConvPlan:
    """Geometry and per-nonzero offsets for one input shape (N, H, W)."""

    n: int
    h: int
    w: int
    pads: Tuple[int, int, int, int]
    oh: int
    ow: int
    hs: int          # phase-grid height, ceil(padded H / sh)
    ws: int
    hg: int          # zero-bordered dY height for the input gradient
    wg: int
    border: Tuple[int, int]  # dY offset (rows, cols) inside that border
    grad_window: Tuple[int, int, int, int]  # (row, col, rows, cols) of the phase grid holding real pixels
    fwd_offsets: torch.Tensor
    bwd_indptr: torch.Tensor
    bwd_perm: torch.Tensor
    bwd_offsets: torch.Tensor

    @property
    def phase_channels(self) -> int:
        return self.bwd_indptr.numel() - 1


def output_size(spec: ConvSpec, h: int, w: int, pads: Tuple[int, int, int, int]) -> Tuple[int, int]:
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
    oh, ow = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"the kernel (size {spec.kernel_size}, dilation {spec.dilation}) is larger "
                         f"than the padded input ({hp}, {wp})")
    return oh, ow


@dataclass
class PhaseTaps:
    """The nonzeros as taps of a stride-1 convolution over stride phases, for both layouts.

    Nonzero k (output channel o, input channel c, tap (a, b) in input pixels) reads phase
    channel ``phase`` = (c, a % sh, b % sw) shifted by (di, dj) = (a // sh, b // sw) on
    a phase grid of ``grid`` = (Hs, Ws); ``reach`` = the largest possible shifts.
    ``order`` / ``indptr`` group the nonzeros by phase channel: the transposed pattern
    of the input gradient."""

    o: torch.Tensor
    phase: torch.Tensor
    di: torch.Tensor
    dj: torch.Tensor
    grid: Tuple[int, int]
    reach: Tuple[int, int]
    order: torch.Tensor
    indptr: torch.Tensor


def phase_taps(spec: ConvSpec, pattern: CSRPattern, h: int, w: int,
               pads: Tuple[int, int, int, int]) -> PhaseTaps:
    # Plans are rare (one per input shape): re-check the pattern in full, so that
    # buffers edited behind the layer's back fail here with a clear message.
    _C.check_csr(*pattern.numpy(), pattern.rows, pattern.cols)
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel_size, spec.stride, spec.dilation
    o = pattern.row_indices()
    col = pattern.indices.long()
    cg = spec.in_channels // spec.groups
    c = (o // (spec.out_channels // spec.groups)) * cg + col // (kh * kw)
    a, b = (col // kw) % kh * dh, col % kw * dw
    phase = (c * sh + a % sh) * sw + b % sw
    order = torch.sort(phase, stable=True).indices
    counts = torch.bincount(phase, minlength=spec.in_channels * sh * sw)
    indptr = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=indptr[1:])
    hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
    return PhaseTaps(o, phase, a // sh, b // sw, (-(-hp // sh), -(-wp // sw)),
                     (dh * (kh - 1) // sh, dw * (kw - 1) // sw), order, indptr)


def make_plan(spec: ConvSpec, pattern: CSRPattern, n: int, h: int, w: int,
              pads: Tuple[int, int, int, int]) -> ConvPlan:
    """Plan of the batch layout."""
    sh, sw = spec.stride
    oh, ow = output_size(spec, h, w, pads)
    t = phase_taps(spec, pattern, h, w, pads)
    (hs, ws), (bh, bw) = t.grid, t.reach
    fwd_offsets = t.phase * (hs * ws * n) + (t.di * ws + t.dj) * n
    # Input gradient: rows are phase channels; the operand is dY inside a zero border
    # wide enough that every tap's window stays in range.
    hg, wg = hs + bh, ws + bw
    # dX' is computed only on the window of the phase grid where real pixels land,
    # not on the zero padding (for a 3x3 pad-1 conv on 4x4 images that is 16 of 36).
    r0, c0 = pads[0] // sh, pads[2] // sw
    window = (r0, c0, (pads[0] + h - 1) // sh + 1 - r0, (pads[2] + w - 1) // sw + 1 - c0)
    bwd_offsets = t.o * (hg * wg * n) + ((bh - t.di + r0) * wg + (bw - t.dj + c0)) * n
    return ConvPlan(n, h, w, pads, oh, ow, hs, ws, hg, wg, (bh, bw), window, fwd_offsets.contiguous(),
                    t.indptr, t.order.contiguous(), bwd_offsets[t.order].contiguous())


def make_width_plan(spec: ConvSpec, pattern: CSRPattern, n: int, h: int, w: int,
                    pads: Tuple[int, int, int, int]) -> WidthPlan:
    """Plan of the width layout (see conv_width.py for the offsets)."""
    oh, ow = output_size(spec, h, w, pads)
    t = phase_taps(spec, pattern, h, w, pads)
    (hs, ws), (reach_h, reach_w) = t.grid, t.reach
    fwd_offsets = t.phase * (hs * ws) + t.di * ws + t.dj
    bwd_offsets = t.o * ((hs + reach_h) * ws) + reach_w + (reach_h - t.di) * ws - t.dj
    return WidthPlan(n, h, w, pads, spec.stride, oh, ow, hs, ws, reach_h, reach_w,
                     fwd_offsets.contiguous(), t.indptr, t.order.contiguous(),
                     bwd_offsets[t.order].contiguous())


def set_strategy(name: str) -> str:
    """Choose how convolutions lay out their data; returns the previous choice.

    * ``"batch"``: the batch-innermost phase layout (an NCHW input is transposed in; the
      output stays CHWN-strided, see conv_layout.py),
    * ``"width"``: the native NCHW layout, vectorized along output rows (conv_width.py),
    * ``"auto"`` (default): per call, whichever measured faster (see pick_strategy).
    """
    global _strategy
    if name not in STRATEGIES:
        raise ValueError(f"conv strategy must be one of {STRATEGIES}, got {name!r}")
    previous, _strategy = _strategy, name
    return previous


def pick_strategy(spec: ConvSpec, batch: int, out_width: int, chwn_input: bool = False) -> str:
    """The layout for a convolution of this spec and input; "auto" follows measurements
    (``python -m sparseprop.bench --conv --strategy batch,width``). The width layout wins
    at batch 1 (the batch layout's vectors are then one row long) and, for stride 1,
    where its junk columns ((kW - 1) * dilation per padded row) are under a tenth of
    the work (3x3 on 32x32: 6%; on 16x16: 11%), for 1x1 kernels (no junk, no copies)
    and depthwise ones (so few weights that the batch layout's transposes dominate).
    Strided convolutions at batch 8 and up ran 20-50% faster in the batch layout. An
    input that is already CHWN-strided (a batch-layout conv's output) takes the batch
    layout whenever batch > 1: it then needs no transpose at all."""
    if _strategy != "auto":
        return _strategy
    if batch == 1:
        return "width"
    if chwn_input:
        return "batch"  # the input is already in the batch layout: no transpose either way
    if spec.stride != (1, 1):
        return "batch"
    junk = spec.dilation[1] * (spec.kernel_size[1] - 1)
    depthwise = spec.groups == spec.in_channels
    return "width" if junk == 0 or depthwise or 10 * junk < out_width + junk else "batch"


def _segments(rows: int, run: int, x_stride: int, y_stride: int) -> Tuple[int, int, int, int]:
    """(segments, n, x_stride, y_stride); one long segment when the rows are back to back."""
    if x_stride == run and y_stride == run:
        return 1, rows * run, 0, 0
    return rows, run, x_stride, y_stride


def _nchw(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.contiguous()


def phase_layout(t: torch.Tensor, stride: Tuple[int, int], top: int, left: int, hs: int,
                 ws: int) -> torch.Tensor:
    """(C, sh, sw, hs, ws, N) copy of t (N, C, H, W): padded by (top, left), split into
    stride phases, batch innermost, zeros where no pixel lands (see to_phase_layout)."""
    n, c = t.shape[0], t.shape[1]
    out = _workspace.empty(c, stride[0], stride[1], hs, ws, n)
    _C.to_phase_layout(as_numpy(_nchw(t)), as_numpy(out), stride[0], stride[1], top, left,
                       get_num_threads())
    return out


def nchw(t: torch.Tensor, h: int, w: int, top: int = 0, left: int = 0) -> torch.Tensor:
    """(N, C, h, w) image from t in phase layout (C, sh, sw, Hs, Ws, N), the inverse."""
    out = _workspace.empty(t.shape[5], t.shape[0], h, w)
    _C.from_phase_layout(as_numpy(t), top, left, as_numpy(out), get_num_threads())
    return out


def to_phases(x: torch.Tensor, spec: ConvSpec, plan: ConvPlan) -> torch.Tensor:
    """X' (C * sh * sw, Hs * Ws * N) from x (N, C, H, W), NCHW or CHWN-strided (conv_layout);
    a CHWN-strided input that needs no padding or phases is used as it is."""
    rows = spec.in_channels * spec.stride[0] * spec.stride[1]
    if is_chwn(x):
        if spec.stride == (1, 1) and (plan.hs, plan.ws) == (plan.h, plan.w):
            return chwn_data(x).view(rows, -1)
        out = phases_chwn(x, spec.stride, plan.pads[0], plan.pads[2], plan.hs, plan.ws)
    else:
        out = phase_layout(x, spec.stride, plan.pads[0], plan.pads[2], plan.hs, plan.ws)
    return out.view(rows, -1)


def from_phases(dxp: torch.Tensor, spec: ConvSpec, plan: ConvPlan, chwn: bool = False) -> torch.Tensor:
    """(N, C, H, W) gradient from dX' on the plan's window of the phase grid: NCHW, or
    CHWN-strided when ``chwn`` (the input's layout)."""
    (sh, sw), (r0, c0, rows, cols) = spec.stride, plan.grad_window
    phases = dxp.view(spec.in_channels, sh, sw, rows, cols, plan.n)
    top, left = plan.pads[0] - r0 * sh, plan.pads[2] - c0 * sw
    if chwn:
        return from_phases_chwn(phases, plan.h, plan.w, top, left)
    return nchw(phases, plan.h, plan.w, top, left)


def grad_operand(grad_y: torch.Tensor, rows: int, cols: int, top: int, left: int) -> torch.Tensor:
    """(O, rows, cols, N) copy of dY inside zeros, from an NCHW or CHWN-strided dY."""
    if is_chwn(grad_y):
        if (rows, cols) == tuple(grad_y.shape[2:]):
            return chwn_data(grad_y)  # no border needed: the gradient as it is
        return padded_chwn(grad_y, rows, cols, top, left)
    return phase_layout(grad_y, (1, 1), top, left, rows, cols)


class _SparseConv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, pattern: CSRPattern, spec: ConvSpec, plan: ConvPlan):
        xp = to_phases(x, spec, plan)
        o, oh, ow, n = spec.out_channels, plan.oh, plan.ow, plan.n
        y = _workspace.empty(o, oh * ow * n)
        segs, run, xs, ys = _segments(oh, ow * n, plan.ws * n, ow * n)
        indptr, _ = pattern.numpy()
        _C.spmm_offsets(indptr, as_numpy(plan.fwd_offsets), as_numpy(values), None, as_numpy(bias),
                        as_numpy(xp).reshape(-1), as_numpy(y).reshape(-1), y.shape[1], run, segs, xs,
                        ys, get_num_threads())
        ctx.pattern, ctx.spec, ctx.plan = pattern, spec, plan
        ctx.chwn_input = is_chwn(x)
        # Save the input, not its padded phase copy: like nn.Conv2d, the conv then keeps
        # no activation-sized memory of its own alive until backward (the input is kept
        # anyway by whoever produced it, e.g. a ReLU), at the price of redoing the copy.
        ctx.save_for_backward(x, values)
        # The output stays in the kernels' layout: an NCHW-shaped view with CHWN strides
        # (conv_layout), which the next BatchNorm/ReLU/add/sparse conv keep as it is.
        return chwn_output(y.view(o, oh, ow, n))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        pattern, spec, plan = ctx.pattern, ctx.spec, ctx.plan
        pattern.expect_current()  # the plan was built from the pattern the forward saw
        x, values = ctx.saved_tensors
        need_x, need_values, need_bias = ctx.needs_input_grad[:3]
        xp = to_phases(x, spec, plan) if need_values else None
        threads = get_num_threads()
        oh, ow, n = plan.oh, plan.ow, plan.n
        indptr, _ = pattern.numpy()
        grad_x = grad_values = grad_bias = None
        if need_x:
            # dY inside a zero border: the transposed taps then always read in range.
            bh, bw = plan.border
            gyp = grad_operand(grad_y, plan.hg, plan.wg, bh, bw)
            flat = as_numpy(gyp).reshape(-1)
            if need_values:
                grad_values = _workspace.empty(pattern.nnz)
                segs, run, xs, ds = _segments(oh, ow * n, plan.ws * n, plan.wg * n)
                _C.sddmm_offsets(indptr, as_numpy(plan.fwd_offsets), flat, (bh * plan.wg + bw) * n,
                                 plan.hg * plan.wg * n, as_numpy(xp).reshape(-1),
                                 as_numpy(grad_values), run, segs, xs, ds, threads)
            rows, cols = plan.grad_window[2:]
            dxp = _workspace.empty(plan.phase_channels, rows * cols * n)
            segs, run, xs, ys = _segments(rows, cols * n, plan.wg * n, cols * n)
            _C.spmm_offsets(as_numpy(plan.bwd_indptr), as_numpy(plan.bwd_offsets), as_numpy(values),
                            as_numpy(plan.bwd_perm), None, flat, as_numpy(dxp).reshape(-1),
                            dxp.shape[1], run, segs, xs, ys, threads)
            grad_x = from_phases(dxp, spec, plan, ctx.chwn_input)
        elif need_values:
            gyc = grad_operand(grad_y, oh, ow, 0, 0)
            grad_values = _workspace.empty(pattern.nnz)
            segs, run, xs, ds = _segments(oh, ow * n, plan.ws * n, ow * n)
            _C.sddmm_offsets(indptr, as_numpy(plan.fwd_offsets), as_numpy(gyc).reshape(-1), 0,
                             oh * ow * n, as_numpy(xp).reshape(-1), as_numpy(grad_values), run,
                             segs, xs, ds, threads)
        if need_bias:
            grad_bias = grad_y.sum(dim=(0, 2, 3))
        return grad_x, grad_values, grad_bias, None, None, None


class PlanCache:
    """A layer's index plans by input shape, for one pattern: least recently used
    first out beyond ``capacity``, safe to share between threads.

    A plan derives from the pattern it was built for, so asking with another
    pattern object drops every plan (the layer's pattern changed)."""

    def __init__(self, capacity: int = _MAX_CACHED_PLANS) -> None:
        self.capacity = capacity
        self._plans: "OrderedDict[tuple, object]" = OrderedDict()
        self._pattern: Optional[CSRPattern] = None
        self._lock = threading.Lock()

    def get(self, pattern: CSRPattern, key: tuple, build: Callable[[], object]):
        """The plan for ``key`` under ``pattern``, built (outside the lock) if missing."""
        with self._lock:
            if self._pattern is not pattern:
                self._plans.clear()
                self._pattern = pattern
            plan = self._plans.get(key)
            if plan is not None:
                self._plans.move_to_end(key)
                return plan
        plan = build()
        with self._lock:
            if self._pattern is pattern:
                self._plans[key] = plan
                self._plans.move_to_end(key)
                while len(self._plans) > self.capacity:
                    self._plans.popitem(last=False)
        return plan

    def clear(self) -> None:
        with self._lock:
            self._plans.clear()
            self._pattern = None

    def __len__(self) -> int:
        return len(self._plans)

    def __iter__(self) -> Iterator[tuple]:
        with self._lock:
            return iter(list(self._plans))

    def __reduce__(self):
        return (PlanCache, (self.capacity,))  # copies start empty (and get their own lock)


def sparse_conv2d_spec(input: torch.Tensor, spec: ConvSpec, pattern: CSRPattern, values: torch.Tensor,
                       bias: Optional[torch.Tensor], plans: Optional["PlanCache"] = None) -> torch.Tensor:
    """Convolution with a validated spec; ``plans`` caches index plans per input shape."""
    check_float32_cpu(input, "input")
    check_float32_cpu(values, "values")
    if bias is not None:
        check_float32_cpu(bias, "bias")
        if bias.shape != (spec.out_channels,):
            raise ValueError(f"bias must have shape ({spec.out_channels},), got {tuple(bias.shape)}")
    expected_cols = spec.in_channels // spec.groups * spec.kernel_size[0] * spec.kernel_size[1]
    if pattern.shape != (spec.out_channels, expected_cols):
        raise ValueError(f"pattern shape {pattern.shape} does not match the convolution "
                         f"({spec.out_channels}, {expected_cols})")
    if values.shape != (pattern.nnz,):
        raise ValueError(f"values must have shape ({pattern.nnz},), got {tuple(values.shape)}")
    unbatched = input.dim() == 3
    if input.dim() not in (3, 4) or input.shape[-3] != spec.in_channels:
        raise ValueError(f"expected input of shape (N, {spec.in_channels}, H, W) or "
                         f"({spec.in_channels}, H, W), got {tuple(input.shape)}")
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
    strategy = pick_strategy(spec, n, output_size(spec, h, w, pads)[1], is_chwn(x))
    build = functools.partial(make_width_plan if strategy == "width" else make_plan,
                              spec, pattern, n, h, w, pads)
    plan = build() if plans is None else plans.get(pattern, (strategy, n, h, w, pads), build)
    values = values.contiguous()
    bias = None if bias is None else bias.contiguous()
    if strategy == "width":
        y = SparseConv2dWidthFn.apply(_nchw(x), values, bias, pattern, plan)
    else:
        y = _SparseConv2dFn.apply(x, values, bias, pattern, spec, plan)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)  # follow the input, like nn.Conv2d
    return y.squeeze(0) if unbatched else y


def sparse_conv2d(input: torch.Tensor, pattern: CSRPattern, values: torch.Tensor,
                  bias: Optional[torch.Tensor] = None, stride=1, padding=0, dilation=1,
                  groups: int = 1, kernel_size=None) -> torch.Tensor:
    """Functional sparse convolution. ``pattern`` is (out_channels, in_channels/groups*kH*kW);
    ``kernel_size`` defaults to square kernels inferred from the pattern and input."""
    if not isinstance(pattern, CSRPattern):
        raise TypeError(f"pattern must be a sparseprop.CSRPattern, got {type(pattern).__name__}")
    if input.dim() not in (3, 4):
        raise ValueError(f"expected a 3-D or 4-D input, got shape {tuple(input.shape)}")
    in_channels = input.shape[-3]
    if kernel_size is None:
        if in_channels % groups:
            raise ValueError(f"groups={groups} must divide in_channels={in_channels}")
        taps = pattern.cols // max(in_channels // groups, 1)
        k = math.isqrt(taps)
        if k * k != taps or taps * (in_channels // groups) != pattern.cols:
            raise ValueError("cannot infer a square kernel_size from the pattern; pass kernel_size")
        kernel_size = k
    spec = ConvSpec.create(in_channels, pattern.rows, kernel_size, stride, padding, dilation, groups,
                           "zeros")
    return sparse_conv2d_spec(input, spec, pattern, values, bias)

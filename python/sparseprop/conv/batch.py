"""The "batch" data layout: BatchPlan, the plan that vectorizes over (output column,
batch), batch innermost.

Every pass is one of the two native kernels in their "offset" form: each nonzero
(o, c, kh, kw) becomes an element offset into a re-laid-out input:

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

The output is returned CHWN-strided (:mod:`sparseprop.conv.chwn`), so the next
layout-aware layer reads it without a transpose.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import torch

from .. import _C, _workspace
from .._backend import as_numpy, get_num_threads
from ..csr import CSRPattern
from .chwn import chwn_data, chwn_output, from_phases_chwn, is_chwn, padded_chwn, phases_chwn
from .plans import ConvPlan, Grads, phase_taps
from .spec import ConvSpec, output_size


@dataclass
class BatchPlan(ConvPlan):
    """Geometry and per-nonzero offsets of the batch layout for one input shape (N, H, W)."""

    layout: ClassVar[str] = "batch"
    needs_nchw: ClassVar[bool] = False  # NCHW and CHWN-strided inputs alike

    spec: ConvSpec       # the convolution (its channels and stride lay the phases out)
    chwn_input: bool     # inputs are CHWN-strided: read (and return dX) in that order
    hs: int              # phase-grid height, ceil(padded H / sh)
    ws: int
    hg: int              # zero-bordered dY height for the input gradient
    wg: int
    border: Tuple[int, int]  # dY offset (rows, cols) inside that border
    grad_window: Tuple[int, int, int, int]  # (row, col, rows, cols) of the phase grid holding real pixels

    @property
    def phase_channels(self) -> int:
        return self.bwd_indptr.numel() - 1

    @classmethod
    def build(cls, spec: ConvSpec, pattern: CSRPattern, n: int, h: int, w: int,
              pads: Tuple[int, int, int, int], chwn_input: bool = False) -> "BatchPlan":
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
        return cls(n=n, h=h, w=w, pads=pads, oh=oh, ow=ow, fwd_offsets=fwd_offsets.contiguous(),
                   bwd_indptr=t.indptr, bwd_perm=t.order.contiguous(),
                   bwd_offsets=bwd_offsets[t.order].contiguous(), spec=spec,
                   chwn_input=chwn_input, hs=hs, ws=ws, hg=hg, wg=wg, border=(bh, bw),
                   grad_window=window)

    def forward(self, x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor],
                pattern: CSRPattern) -> torch.Tensor:
        xp = to_phases(x, self.spec, self, self.chwn_input)
        o, oh, ow, n = self.spec.out_channels, self.oh, self.ow, self.n
        y = _workspace.empty(o, oh * ow * n)
        segs, run, xs, ys = _segments(oh, ow * n, self.ws * n, ow * n)
        indptr, _ = pattern.numpy()
        _C.spmm_offsets(indptr, as_numpy(self.fwd_offsets), as_numpy(values), None, as_numpy(bias),
                        as_numpy(xp).reshape(-1), as_numpy(y).reshape(-1), y.shape[1], run, segs, xs,
                        ys, get_num_threads())
        # The output stays in the kernels' layout: an NCHW-shaped view with CHWN strides
        # (chwn.py), which the next BatchNorm/ReLU/add/sparse conv keep as it is.
        return chwn_output(y.view(o, oh, ow, n))

    def backward(self, grad_y: torch.Tensor, x: torch.Tensor, values: torch.Tensor,
                 pattern: CSRPattern, need_x: bool, need_values: bool, need_bias: bool) -> Grads:
        spec = self.spec
        xp = to_phases(x, spec, self, self.chwn_input) if need_values else None
        threads = get_num_threads()
        oh, ow, n = self.oh, self.ow, self.n
        indptr, _ = pattern.numpy()
        grad_x = grad_values = grad_bias = None
        if need_x:
            # dY inside a zero border: the transposed taps then always read in range.
            bh, bw = self.border
            gyp = grad_operand(grad_y, self.hg, self.wg, bh, bw)
            flat = as_numpy(gyp).reshape(-1)
            if need_values:
                grad_values = _workspace.empty(pattern.nnz)
                segs, run, xs, ds = _segments(oh, ow * n, self.ws * n, self.wg * n)
                _C.sddmm_offsets(indptr, as_numpy(self.fwd_offsets), flat, (bh * self.wg + bw) * n,
                                 self.hg * self.wg * n, as_numpy(xp).reshape(-1),
                                 as_numpy(grad_values), run, segs, xs, ds, threads)
            rows, cols = self.grad_window[2:]
            dxp = _workspace.empty(self.phase_channels, rows * cols * n)
            segs, run, xs, ys = _segments(rows, cols * n, self.wg * n, cols * n)
            _C.spmm_offsets(as_numpy(self.bwd_indptr), as_numpy(self.bwd_offsets), as_numpy(values),
                            as_numpy(self.bwd_perm), None, flat, as_numpy(dxp).reshape(-1),
                            dxp.shape[1], run, segs, xs, ys, threads)
            grad_x = from_phases(dxp, spec, self, self.chwn_input)
        elif need_values:
            gyc = grad_operand(grad_y, oh, ow, 0, 0)
            grad_values = _workspace.empty(pattern.nnz)
            segs, run, xs, ds = _segments(oh, ow * n, self.ws * n, ow * n)
            _C.sddmm_offsets(indptr, as_numpy(self.fwd_offsets), as_numpy(gyc).reshape(-1), 0,
                             oh * ow * n, as_numpy(xp).reshape(-1), as_numpy(grad_values), run,
                             segs, xs, ds, threads)
        if need_bias:
            grad_bias = grad_y.sum(dim=(0, 2, 3))
        return grad_x, grad_values, grad_bias


def make_plan(spec: ConvSpec, pattern: CSRPattern, n: int, h: int, w: int,
              pads: Tuple[int, int, int, int], chwn_input: bool = False) -> BatchPlan:
    """Plan of the batch layout (``BatchPlan.build``)."""
    return BatchPlan.build(spec, pattern, n, h, w, pads, chwn_input)


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


def to_phases(x: torch.Tensor, spec: ConvSpec, plan: BatchPlan,
              chwn: Optional[bool] = None) -> torch.Tensor:
    """X' (C * sh * sw, Hs * Ws * N) from x (N, C, H, W), NCHW or CHWN-strided (``chwn``;
    None: look at x); a CHWN-strided input that needs no padding or phases is used as it is."""
    rows = spec.in_channels * spec.stride[0] * spec.stride[1]
    if (is_chwn(x) if chwn is None else chwn):
        if spec.stride == (1, 1) and (plan.hs, plan.ws) == (plan.h, plan.w):
            return chwn_data(x).view(rows, -1)
        out = phases_chwn(x, spec.stride, plan.pads[0], plan.pads[2], plan.hs, plan.ws)
    else:
        out = phase_layout(x, spec.stride, plan.pads[0], plan.pads[2], plan.hs, plan.ws)
    return out.view(rows, -1)


def from_phases(dxp: torch.Tensor, spec: ConvSpec, plan: BatchPlan, chwn: bool = False) -> torch.Tensor:
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

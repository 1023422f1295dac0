"""The "width" data layout: WidthPlan, sparse convolution in the native NCHW layout.

The vector dimension runs along each image's output rows, so nothing is
transposed; the only layout work is copies (pads, crops, stride phases):

* x (N, C, H, W) is zero-padded and split into stride phases, planes of
  Hs x Ws (for stride 1 simply the padded image), plus B zeros at the end. Tap
  (a, b) of a stride-s convolution reads phase (a % sh, b % sw) of its input
  channel, shifted by (di, dj) = (a // sh, b // sw), so the convolution becomes
  a stride-1 one over phase planes. Computing every output row over the whole
  phase width Ws (its last Ws - OW >= B = max dj columns are junk, cropped
  away) turns the window of one tap into one contiguous run of OH * Ws floats
  per image:  Y~[n, o, i*Ws + j] = bias[o] + sum_k w_k XP[n, p_k, (i + di_k) * Ws + j + dj_k].
* dY is copied into G: planes of Hs + A rows (A = max di) of width Ws, dY in
  rows A.. A + OH, zero elsewhere (junk columns included), after B leading
  zeros. Then dW_k = sum_n <dY~[n, o_k], XP[n, p_k, tap_k:]> (SDDMM over the dY
  rows of G; junk columns add nothing), and the input gradient of each phase
  plane is one run per image as well:
  dXP[n, p, r*Ws + q] = sum_k w_k G[n, o_k, (r - di_k + A) * Ws + q - dj_k]; a
  negative column wraps into the previous row's zero junk columns. dX is then
  merged back from the phases.

Junk costs (Ws - OW) / Ws of the work, so this wins on wide images and the
batch-innermost phase layout (batch.py) on small ones; choice.py chooses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import torch

from .. import _C, _workspace
from .._backend import as_numpy, get_num_threads
from ..csr import CSRPattern
from .plans import ConvPlan, Grads, phase_taps
from .spec import ConvSpec, output_size


@dataclass
class WidthPlan(ConvPlan):
    """Geometry and per-nonzero offsets of the width layout for one input shape (N, H, W)."""

    layout: ClassVar[str] = "width"
    needs_nchw: ClassVar[bool] = True  # the kernels read x as NCHW-contiguous planes

    stride: Tuple[int, int]
    hs: int            # phase plane height and width (stride 1: the padded image)
    ws: int
    reach_h: int       # A: phase rows a tap reaches below its output row
    reach_w: int       # B: phase columns it reaches to the right (<= the junk columns)

    @property
    def phases(self) -> int:
        return self.stride[0] * self.stride[1]

    @property
    def phase_plane(self) -> int:
        return self.hs * self.ws

    @property
    def g_rows(self) -> int:
        return self.hs + self.reach_h

    @property
    def copies_nothing(self) -> bool:
        """1x1 stride-1 kernels without padding read x and dY and write Y and dX in place."""
        return self.phases == 1 and (self.hs, self.ws) == (self.oh, self.ow) == (self.h, self.w)

    @classmethod
    def build(cls, spec: ConvSpec, pattern: CSRPattern, n: int, h: int, w: int,
              pads: Tuple[int, int, int, int], chwn_input: bool = False) -> "WidthPlan":
        oh, ow = output_size(spec, h, w, pads)
        t = phase_taps(spec, pattern, h, w, pads)
        (hs, ws), (reach_h, reach_w) = t.grid, t.reach
        fwd_offsets = t.phase * (hs * ws) + t.di * ws + t.dj
        bwd_offsets = t.o * ((hs + reach_h) * ws) + reach_w + (reach_h - t.di) * ws - t.dj
        return cls(n=n, h=h, w=w, pads=pads, oh=oh, ow=ow, fwd_offsets=fwd_offsets.contiguous(),
                   bwd_indptr=t.indptr, bwd_perm=t.order.contiguous(),
                   bwd_offsets=bwd_offsets[t.order].contiguous(), stride=spec.stride, hs=hs,
                   ws=ws, reach_h=reach_h, reach_w=reach_w)

    def forward(self, x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor],
                pattern: CSRPattern) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        o, oh, ow, ws = pattern.rows, self.oh, self.ow, self.ws
        xp = _split_input(x, self)
        y = _workspace.empty(n, o, oh, ow)
        wide = y if ws == ow else _workspace.empty(n, o, oh, ws)
        indptr, _ = pattern.numpy()
        _C.spmm_offsets(indptr, as_numpy(self.fwd_offsets), as_numpy(values), None, as_numpy(bias),
                        as_numpy(xp).reshape(-1), as_numpy(wide).reshape(-1), oh * ws, oh * ws, n,
                        c * self.phases * self.phase_plane, o * oh * ws, get_num_threads())
        if wide is not y:
            _C.merge_phases(as_numpy(wide).reshape(-1, 1, 1, oh, ws), _planes(y, oh, ow), 0, 0,
                            get_num_threads())
        return y

    def backward(self, grad_y: torch.Tensor, x: torch.Tensor, values: torch.Tensor,
                 pattern: CSRPattern, need_x: bool, need_values: bool, need_bias: bool) -> Grads:
        c = x.shape[1]
        xp = _split_input(x, self) if need_values else None
        threads = get_num_threads()
        n, o = grad_y.shape[0], grad_y.shape[1]
        ws, image = self.ws, c * self.phases * self.phase_plane
        grad_y = grad_y.contiguous()
        g = as_numpy(_bordered_grad(grad_y, self))
        g_plane = self.g_rows * ws
        grad_x = grad_values = grad_bias = None
        if need_values:
            indptr, _ = pattern.numpy()
            grad_values = _workspace.empty(pattern.nnz)
            interior = self.reach_w + self.reach_h * ws  # dY's first element inside G
            _C.sddmm_offsets(indptr, as_numpy(self.fwd_offsets), g, interior, g_plane,
                             as_numpy(xp).reshape(-1), as_numpy(grad_values), self.oh * ws, n,
                             image, o * g_plane, threads)
        if need_x:
            grad_x = _workspace.empty(n, c, self.h, self.w)
            dxp = grad_x if self.copies_nothing else _workspace.empty(n * image)
            _C.spmm_offsets(as_numpy(self.bwd_indptr), as_numpy(self.bwd_offsets), as_numpy(values),
                            as_numpy(self.bwd_perm), None, g, as_numpy(dxp).reshape(-1),
                            self.phase_plane, self.phase_plane, n, o * g_plane, image, threads)
            if dxp is not grad_x:
                _C.merge_phases(_phase_planes(dxp, self), _planes(grad_x, self.h, self.w),
                                self.pads[0], self.pads[2], threads)
        if need_bias:
            grad_bias = grad_y.sum(dim=(0, 2, 3))
        return grad_x, grad_values, grad_bias


def make_width_plan(spec: ConvSpec, pattern: CSRPattern, n: int, h: int, w: int,
                    pads: Tuple[int, int, int, int], chwn_input: bool = False) -> WidthPlan:
    """Plan of the width layout (``WidthPlan.build``)."""
    return WidthPlan.build(spec, pattern, n, h, w, pads, chwn_input)


def _planes(t: torch.Tensor, rows: int, cols: int):
    return as_numpy(t).reshape(-1, rows, cols)


def _phase_planes(t: torch.Tensor, plan: WidthPlan):
    return as_numpy(t).reshape(-1, plan.stride[0], plan.stride[1], plan.hs, plan.ws)


def _split_input(x: torch.Tensor, plan: WidthPlan) -> torch.Tensor:
    """XP (flat): x padded and split into phase planes, then B trailing zeros; x itself
    when there is nothing to do (saved for backward as is, so autograd sees in-place
    changes to it)."""
    if plan.copies_nothing:
        return x
    body = x.shape[0] * x.shape[1] * plan.phases * plan.phase_plane
    xp = _workspace.empty(body + plan.reach_w)
    _C.split_phases(_planes(x, plan.h, plan.w), _phase_planes(xp[:body], plan), plan.pads[0],
                    plan.pads[2], get_num_threads())
    xp[body:] = 0.0
    return xp


def _bordered_grad(grad_y: torch.Tensor, plan: WidthPlan) -> torch.Tensor:
    """G (flat): B zeros, then dY in planes of Hs + A rows by Ws, zero elsewhere."""
    if plan.copies_nothing:
        return grad_y.reshape(-1)
    body = grad_y.shape[0] * grad_y.shape[1] * plan.g_rows * plan.ws
    g = _workspace.empty(plan.reach_w + body)
    g[:plan.reach_w] = 0.0
    dst = as_numpy(g[plan.reach_w:]).reshape(-1, 1, 1, plan.g_rows, plan.ws)
    _C.split_phases(_planes(grad_y, plan.oh, plan.ow), dst, plan.reach_h, 0, get_num_threads())
    return g

"""Stride-1 sparse convolution in the native NCHW layout ("width" strategy).

The vector dimension runs along each image's output rows, so nothing is
transposed; the only layout work is pads and crops at copy speed:

* x (N, C, H, W) is zero-padded into planes of Hp x Wp (plus B zeros at the end,
  B = dilated kernel width - 1). Computing every output row over the whole
  padded width Wp (its last B columns are junk, cropped away) turns the window
  of one tap (a, b) into one contiguous run of OH * Wp floats per image:
  Y~[n, o, i*Wp + j] = bias[o] + sum_k w_k Xp[n, c_k, (i + a_k) * Wp + j + b_k].
* dY is copied into G: planes of OH + 2A rows (A = dilated kernel height - 1) of
  width Wp, zero in the junk columns and in A-row borders above and below,
  after B leading zeros. Then dW_k = sum_n <dY~[n, o_k], Xp[n, c_k, tap_k:]>
  (SDDMM over the interior of G; junk columns are zero so they add nothing), and
  the input gradient over the padded grid is one run per image as well:
  dXp[n, c, p*Wp + q] = sum_k w_k G[n, o_k, (p - a_k + A) * Wp + q - b_k]; a
  negative column wraps into the previous row's zero junk columns.

Junk costs B / Wp of the work, so this wins on wide images and the
batch-innermost phase layout (conv.py) on small ones; conv.py chooses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from torch.autograd.function import once_differentiable

from . import _C, _workspace
from ._backend import as_numpy, get_num_threads
from .csr import CSRPattern


@dataclass
class WidthPlan:
    """Geometry and per-nonzero offsets of a stride-1 convolution for one input shape."""

    n: int
    h: int
    w: int
    pads: Tuple[int, int, int, int]
    oh: int
    ow: int
    hp: int            # padded input height and width
    wp: int
    reach_h: int       # A: rows a tap reaches below its output row
    reach_w: int       # B: columns it reaches right; also the junk columns per row
    fwd_offsets: torch.Tensor
    bwd_indptr: torch.Tensor
    bwd_perm: torch.Tensor
    bwd_offsets: torch.Tensor

    @property
    def g_rows(self) -> int:
        return self.oh + 2 * self.reach_h

    @property
    def copies_nothing(self) -> bool:
        """1x1 kernels without padding read x and dY and write Y and dX in place."""
        return self.reach_h == 0 and self.reach_w == 0 and self.pads == (0, 0, 0, 0)


def make_width_plan(spec, taps, n: int, h: int, w: int,
                    pads: Tuple[int, int, int, int]) -> WidthPlan:
    """Plan for a stride-1 ``spec`` (a conv.ConvSpec); ``taps`` = (o, c, a, b) per nonzero
    (conv.decode_taps: channels, dilated tap offsets)."""
    o, c, a, b = taps
    (kh, kw), (dh, dw) = spec.kernel_size, spec.dilation
    reach_h, reach_w = dh * (kh - 1), dw * (kw - 1)
    hp, wp = h + pads[0] + pads[1], w + pads[2] + pads[3]
    oh, ow = hp - reach_h, wp - reach_w
    fwd_offsets = c * (hp * wp) + a * wp + b
    order = torch.sort(c, stable=True).indices
    counts = torch.bincount(c, minlength=spec.in_channels)
    bwd_indptr = torch.zeros(spec.in_channels + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=bwd_indptr[1:])
    g_plane = (oh + 2 * reach_h) * wp
    bwd_offsets = (o * g_plane + reach_w + (reach_h - a) * wp - b)[order]
    return WidthPlan(n, h, w, pads, oh, ow, hp, wp, reach_h, reach_w, fwd_offsets.contiguous(), bwd_indptr,
                     order.contiguous(), bwd_offsets.contiguous())


def _planes(t: torch.Tensor, rows: int, cols: int):
    return as_numpy(t).reshape(-1, rows, cols)


def _pad_input(x: torch.Tensor, plan: WidthPlan) -> torch.Tensor:
    """Xp (flat): x zero-padded into Hp x Wp planes, then B trailing zeros; x itself
    when there is nothing to pad (saved for backward as is, so autograd sees in-place
    changes to it)."""
    if plan.copies_nothing:
        return x
    body = x.shape[0] * x.shape[1] * plan.hp * plan.wp
    xp = _workspace.empty(body + plan.reach_w)
    _C.copy_window(_planes(x, plan.h, plan.w), _planes(xp[:body], plan.hp, plan.wp), plan.pads[0],
                   plan.pads[2], get_num_threads())
    xp[body:] = 0.0
    return xp


def _bordered_grad(grad_y: torch.Tensor, plan: WidthPlan) -> torch.Tensor:
    """G (flat): B zeros, then dY in planes of OH + 2A rows by Wp, zero elsewhere."""
    if plan.copies_nothing:
        return grad_y.reshape(-1)
    body = grad_y.shape[0] * grad_y.shape[1] * plan.g_rows * plan.wp
    g = _workspace.empty(plan.reach_w + body)
    g[:plan.reach_w] = 0.0
    _C.copy_window(_planes(grad_y, plan.oh, plan.ow),
                   _planes(g[plan.reach_w:], plan.g_rows, plan.wp), plan.reach_h, 0,
                   get_num_threads())
    return g


class _SparseConv2dWidthFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, pattern: CSRPattern, plan: WidthPlan):
        n, c = x.shape[0], x.shape[1]
        o, oh, ow, wp = pattern.rows, plan.oh, plan.ow, plan.wp
        xp = _pad_input(x, plan)
        y = _workspace.empty(n, o, oh, ow)
        wide = y if plan.reach_w == 0 else _workspace.empty(n, o, oh, wp)
        indptr, _ = pattern.numpy()
        _C.spmm_offsets(indptr, as_numpy(plan.fwd_offsets), as_numpy(values), None, as_numpy(bias),
                        as_numpy(xp).reshape(-1), as_numpy(wide).reshape(-1), oh * wp, oh * wp, n,
                        c * plan.hp * wp, o * oh * wp, get_num_threads())
        if wide is not y:
            _C.copy_window(_planes(wide, oh, wp), _planes(y, oh, ow), 0, 0, get_num_threads())
        ctx.pattern, ctx.plan, ctx.channels = pattern, plan, c
        ctx.save_for_backward(xp, values)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        pattern, plan, c = ctx.pattern, ctx.plan, ctx.channels
        xp, values = ctx.saved_tensors
        need_x, need_values, need_bias = ctx.needs_input_grad[:3]
        threads = get_num_threads()
        n, o = grad_y.shape[0], grad_y.shape[1]
        hp, wp = plan.hp, plan.wp
        grad_y = grad_y.contiguous()
        g = as_numpy(_bordered_grad(grad_y, plan))
        g_plane = plan.g_rows * wp
        grad_x = grad_values = grad_bias = None
        if need_values:
            indptr, _ = pattern.numpy()
            grad_values = _workspace.empty(pattern.nnz)
            interior = plan.reach_w + plan.reach_h * wp  # dY's first element inside G
            _C.sddmm_offsets(indptr, as_numpy(plan.fwd_offsets), g, interior, g_plane,
                             as_numpy(xp).reshape(-1), as_numpy(grad_values), plan.oh * wp, n,
                             c * hp * wp, o * g_plane, threads)
        if need_x:
            grad_x = _workspace.empty(n, c, plan.h, plan.w)
            dxp = grad_x if plan.copies_nothing else _workspace.empty(n, c, hp, wp)
            _C.spmm_offsets(as_numpy(plan.bwd_indptr), as_numpy(plan.bwd_offsets), as_numpy(values),
                            as_numpy(plan.bwd_perm), None, g, as_numpy(dxp).reshape(-1), hp * wp,
                            hp * wp, n, o * g_plane, c * hp * wp, threads)
            if dxp is not grad_x:
                _C.copy_window(_planes(dxp, hp, wp), _planes(grad_x, plan.h, plan.w), -plan.pads[0],
                               -plan.pads[2], threads)
        if need_bias:
            grad_bias = grad_y.sum(dim=(0, 2, 3))
        return grad_x, grad_values, grad_bias, None, None

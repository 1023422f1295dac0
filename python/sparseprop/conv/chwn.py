"""CHWN-strided tensors: the batch layout as a tensor layout, in which conv nets keep
activations between sparse convolutions.

The batch layout (batch.py) stores an activation (N, C, H, W) as (C, H, W, N),
batch innermost. A sparse convolution returns its output as the NCHW-shaped view
``y_chwn.permute(3, 0, 1, 2)``: a real tensor of shape (N, C, H, W) whose strides
say the data sit in (C, H, W, N) order ("CHWN-strided"). Any consumer gets correct
values; the ones that matter in conv nets keep the order for free:

* ReLU, residual adds and other elementwise ops (TensorIterator follows the
  inputs' stride order),
* :class:`~sparseprop.conv.batchnorm.LayoutBatchNorm2d`: BatchNorm over N, H, W of a CHWN tensor is
  BatchNorm of its contiguous (1, C, H*W*N, 1) view, running statistics included,
* the next sparse convolution, which reads a CHWN-strided input without a
  transpose (only the zero-padding / stride-phase copy remains), and returns its
  input gradient in the same order.

So a model converts to and from NCHW only at its edges (a dense stem, the pooled
head), with no change to the training loop.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .. import _workspace

__all__ = ["is_chwn", "chwn_view", "to_chwn"]


def is_chwn(t: torch.Tensor) -> bool:
    """True for a 4-D (N, C, H, W) tensor whose memory is in (C, H, W, N) order and that is
    not also plain NCHW-contiguous (then NCHW wins: e.g. batch 1)."""
    return (t.dim() == 4 and not t.is_contiguous() and t.layout == torch.strided
            and t.permute(1, 2, 3, 0).is_contiguous())


def chwn_view(t: torch.Tensor) -> torch.Tensor:
    """The (N, C, H, W) view of a contiguous (C, H, W, N) tensor."""
    return t.permute(3, 0, 1, 2)


def chwn_output(t: torch.Tensor) -> torch.Tensor:
    """Like chwn_view(t), but a tensor of its own on t's storage rather than a view: what a
    custom autograd Function returns (autograd forbids in-place ops on view outputs)."""
    c, h, w, n = t.shape
    return torch.empty(0, dtype=t.dtype).set_(t.untyped_storage(), t.storage_offset(),
                                             (n, c, h, w), (1, h * w * n, w * n, n))


def chwn_data(t: torch.Tensor) -> torch.Tensor:
    """The contiguous (C, H, W, N) tensor behind a CHWN-strided one (a view)."""
    return t.permute(1, 2, 3, 0)


def to_chwn(t: torch.Tensor) -> torch.Tensor:
    """t (N, C, H, W) in any layout as a CHWN-strided tensor (a copy unless it already is)."""
    if is_chwn(t):
        return t
    out = _workspace.empty(t.shape[1], t.shape[2], t.shape[3], t.shape[0])
    out.copy_(t.permute(1, 2, 3, 0))
    return chwn_view(out)


def padded_chwn(t: torch.Tensor, rows: int, cols: int, top: int, left: int) -> torch.Tensor:
    """(C, rows, cols, N) copy of t (N, C, H, W), any layout, placed at (top, left) inside
    zeros: the zero-bordered operand of the batch layout's stride-1 kernels."""
    n, c, h, w = t.shape
    src = t.permute(1, 2, 3, 0)
    out = _workspace.empty(c, rows, cols, n)
    bottom, right = top + h, left + w
    # Zero only the border: the interior is overwritten by the copy.
    out[:, :top].zero_()
    out[:, bottom:].zero_()
    out[:, top:bottom, :left].zero_()
    out[:, top:bottom, right:].zero_()
    out[:, top:bottom, left:right].copy_(src)
    return out


def _phase_windows(h: int, w: int, sh: int, sw: int, top: int, left: int):
    """For each stride phase (p, q) that receives pixels: (p, q, image index, grid index),
    where ``t[image]`` of a (C, h, w, N) image and ``phase[grid]`` of that phase's
    (C, rows, cols, N) grid are the same pixels (the padded image's rows ``p, p+sh, ...``)."""
    for p in range(sh):
        r0 = (p - top) % sh            # first input row landing in phase row class p
        i0 = (r0 + top) // sh          # its row on the phase grid
        nr = len(range(r0, h, sh))
        for q in range(sw):
            c0 = (q - left) % sw
            j0 = (c0 + left) // sw
            nc = len(range(c0, w, sw))
            if nr and nc:
                yield (p, q, (slice(None), slice(r0, None, sh), slice(c0, None, sw)),
                       (slice(None), slice(i0, i0 + nr), slice(j0, j0 + nc)))


def phases_chwn(t: torch.Tensor, stride: Tuple[int, int], top: int, left: int, hs: int,
                ws: int) -> torch.Tensor:
    """(C, sh, sw, hs, ws, N) stride-phase copy of t (N, C, H, W), any layout: phase (p, q)
    holds the rows/cols of the zero-padded input congruent to (p, q) (as
    ``_C.to_phase_layout`` does for an NCHW input)."""
    sh, sw = stride
    if (sh, sw) == (1, 1):
        return padded_chwn(t, hs, ws, top, left).view(t.shape[1], 1, 1, hs, ws, t.shape[0])
    n, c, h, w = t.shape
    src = t.permute(1, 2, 3, 0)
    out = _workspace.empty(c, sh, sw, hs, ws, n)
    out.zero_()
    for p, q, image, grid in _phase_windows(h, w, sh, sw, top, left):
        out[:, p, q][grid].copy_(src[image])
    return out


def from_phases_chwn(phases: torch.Tensor, h: int, w: int, top: int, left: int) -> torch.Tensor:
    """CHWN-strided (N, C, h, w) image from phases (C, sh, sw, rows, cols, N), the inverse of
    phases_chwn: pixel (y, x) is phase ((y + top) % sh, (x + left) % sw) at
    ((y + top) // sh, (x + left) // sw)."""
    c, sh, sw, _, _, n = phases.shape
    if (sh, sw) == (1, 1):
        grid = phases[:, 0, 0]
        if top == 0 and left == 0 and grid.shape[1] == h and grid.shape[2] == w:
            return chwn_view(grid)  # the window is the image: no copy
        out = _workspace.empty(c, h, w, n)
        out.copy_(grid[:, top:top + h, left:left + w])
        return chwn_view(out)
    out = _workspace.empty(c, h, w, n)
    for p, q, image, grid in _phase_windows(h, w, sh, sw, top, left):
        out[image].copy_(phases[:, p, q][grid])
    return chwn_view(out)


class _SubsampleCHWN(torch.autograd.Function):
    """x[:, :, ::sh, ::sw] of a CHWN-strided x as a CHWN-strided copy; the gradient is
    scattered back in CHWN order too (slicing's own backward would return NCHW)."""

    @staticmethod
    def forward(ctx, x, sh: int, sw: int):
        ctx.shape, ctx.stride = x.shape, (sh, sw)
        src = chwn_data(x)[:, ::sh, ::sw]
        out = _workspace.empty(*src.shape)
        out.copy_(src)
        return chwn_output(out)

    @staticmethod
    def backward(ctx, grad):
        n, c, h, w = ctx.shape
        sh, sw = ctx.stride
        gx = _workspace.empty(c, h, w, n)
        gx.zero_()
        gx[:, ::sh, ::sw].copy_(grad.permute(1, 2, 3, 0))
        return chwn_view(gx), None, None


def subsample_chwn(x: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    return _SubsampleCHWN.apply(x, sh, sw)

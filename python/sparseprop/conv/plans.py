"""The one plan interface both data layouts implement, and the taps they share.

A plan is everything a convolution precomputes for one pattern and one input shape
(geometry, per-nonzero offsets into the re-laid-out input, the transposed pattern of the
input gradient); ``forward`` and ``backward`` then run the native kernels on it. Every
nonzero (o, c, kh, kw) becomes a tap of a stride-1 convolution over stride phases
(:class:`PhaseTaps`); the layouts differ in how they lay the phases out in memory:

* :class:`~sparseprop.conv.batch.BatchPlan` ("batch"): phases stored batch-innermost,
  (C * sh * sw, Hs, Ws, N); the output stays in that order (CHWN-strided).
* :class:`~sparseprop.conv.width.WidthPlan` ("width"): native NCHW, vectorized along
  each image's output rows.

:func:`sparseprop.conv.choice.pick_layout` chooses between them per call.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import torch

from .. import _C
from ..csr import CSRPattern
from .spec import ConvSpec

Grads = Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]


@dataclass
class ConvPlan(abc.ABC):
    """One convolution's plan for one input shape (N, H, W) in one data layout.

    ``fwd_offsets`` are the nonzeros' input offsets (CSR order); ``bwd_indptr`` /
    ``bwd_perm`` / ``bwd_offsets`` the transposed pattern (rows = phase channels) of the
    input gradient with its offsets into the zero-bordered output gradient."""

    layout: ClassVar[str]
    needs_nchw: ClassVar[bool]  # forward wants an NCHW-contiguous input

    n: int
    h: int
    w: int
    pads: Tuple[int, int, int, int]
    oh: int
    ow: int
    fwd_offsets: torch.Tensor
    bwd_indptr: torch.Tensor
    bwd_perm: torch.Tensor
    bwd_offsets: torch.Tensor

    @classmethod
    @abc.abstractmethod
    def build(cls, spec: ConvSpec, pattern: CSRPattern, n: int, h: int, w: int,
              pads: Tuple[int, int, int, int], chwn_input: bool = False) -> "ConvPlan":
        """The plan for inputs (n, C, h, w) zero-padded by ``pads``; ``chwn_input``: the
        inputs are CHWN-strided (see :mod:`sparseprop.conv.chwn`)."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor],
                pattern: CSRPattern) -> torch.Tensor:
        """The convolution's output (N, O, OH, OW) for input x (N, C, H, W)."""

    @abc.abstractmethod
    def backward(self, grad_y: torch.Tensor, x: torch.Tensor, values: torch.Tensor,
                 pattern: CSRPattern, need_x: bool, need_values: bool, need_bias: bool) -> Grads:
        """(grad_x, grad_values, grad_bias), None where not needed, for the x forward saw."""


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

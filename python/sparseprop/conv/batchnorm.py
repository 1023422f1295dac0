"""LayoutBatchNorm2d: nn.BatchNorm2d that keeps CHWN-strided activations (the batch
layout's output, see chwn.py) in their layout, and the swaps in and out of a model."""
from __future__ import annotations

import torch
from torch import nn

from .chwn import chwn_data, chwn_view, is_chwn

__all__ = ["LayoutBatchNorm2d", "layout_resident_batchnorms"]


class LayoutBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that keeps CHWN-strided inputs (the sparse convolutions' output
    layout) in that layout at no cost: their statistics over (N, H, W) are those of the
    contiguous (1, C, H*W*N, 1) view, so it normalizes that view (running statistics and
    ``num_batches_tracked`` updated exactly as nn.BatchNorm2d would). Every other input
    goes through nn.BatchNorm2d unchanged. Same parameters, buffers and state_dict keys
    as nn.BatchNorm2d; :func:`layout_resident_batchnorms` swaps it in."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not is_chwn(input):
            return super().forward(input)
        n, c, h, w = input.shape
        flat = chwn_data(input).reshape(1, c, h * w * n, 1)
        out = super().forward(flat)
        return chwn_view(out.view(c, h, w, n))


def layout_resident_batchnorms(model: nn.Module) -> nn.Module:
    """Make every plain ``nn.BatchNorm2d`` of ``model`` a :class:`LayoutBatchNorm2d`, in
    place (the modules keep their identity, parameters and buffers, so optimizers and
    hooks stay valid); returns ``model``. Subclasses of nn.BatchNorm2d are left alone
    (their forward may differ). Without sparse convolutions nothing changes: every
    input is then plain NCHW and takes nn.BatchNorm2d's own path."""
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = LayoutBatchNorm2d
    return model


def plain_batchnorms(model: nn.Module) -> nn.Module:
    """Undo :func:`layout_resident_batchnorms` (``densify`` leaves a plain PyTorch model)."""
    for m in model.modules():
        if type(m) is LayoutBatchNorm2d:
            m.__class__ = nn.BatchNorm2d
    return model

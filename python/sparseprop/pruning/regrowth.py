"""Drop-and-grow, the regrowth step of RigL and GraNet: a layer's weakest kept weights
make room for the positions where the dense gradient is largest."""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ..csr import topk_mask
from .scores import gradient_magnitude, magnitude

__all__ = ["drop_and_grow", "require_grads"]


def drop_and_grow(weight: torch.Tensor, mask: torch.Tensor, grad: torch.Tensor, count: int) -> torch.Tensor:
    """RigL's update of one layer: drop the ``count`` smallest-magnitude kept weights, then
    grow the ``count`` positions outside the remaining mask with the largest |gradient|."""
    nnz = int(torch.count_nonzero(mask))
    count = min(count, nnz, mask.numel() - nnz)
    if count <= 0:
        return mask
    kept = topk_mask(magnitude(weight), nnz - count, allowed=mask)
    grown = topk_mask(gradient_magnitude(grad), count, allowed=~kept)
    return kept | grown


def require_grads(grads: Optional[Dict[str, torch.Tensor]], name: str) -> Dict[str, torch.Tensor]:
    """``grads`` when every layer has one; else a RuntimeError saying how to call the pruner."""
    if grads is None or any(g is None for g in grads.values()):
        raise RuntimeError(f"{name} needs the dense gradient of the step before an update: call "
                           f"pruner.step() after optimizer.step(), once per step that ran backward")
    return grads

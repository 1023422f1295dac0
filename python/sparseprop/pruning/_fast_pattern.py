"""A pruner's pattern edits in O(nnz) passes, with no position search.

The general tools (``from_dense``, ``update_pattern``) accept any mask and find where each
entry went with a sorted search over all positions; on a 4096x4096 layer that is ~1 s per
mask update. A pruner's edits are of two simple kinds, and both keep CSR storage order:

* a masked dense layer becomes sparse: its nonzeros are the mask's True entries in
  row-major order, so values and optimizer state are plain gathers at those positions;
* a sparse layer keeps a subset of its entries: the survivors are a subsequence, so
  values, gradient and state are gathers at the survivors' indices.

Numpy does the index work (its flatnonzero / take are several times faster than torch's
nonzero / masked_select on two threads).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..csr import CSRPattern
from ..optim_state import check_optimizer

__all__ = ["pattern_of_mask", "gather_at", "keep_entries"]


def pattern_of_mask(mask: torch.Tensor, shape: Tuple[int, int]) -> Tuple[np.ndarray, CSRPattern]:
    """``(positions, pattern)`` of a boolean mask viewed as ``shape`` (rows, cols):
    the row-major flat positions of its True entries (= CSR storage order) and the
    pattern holding them."""
    rows, cols = shape
    m = mask.detach().reshape(rows, cols).contiguous()
    if m.dtype != torch.bool:
        m = m != 0
    m_np = m.numpy()
    positions = np.flatnonzero(m_np)
    indptr = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(np.count_nonzero(m_np, axis=1), out=indptr[1:])
    if cols == 0:
        indices = np.zeros(0, dtype=np.int32)
    elif rows * cols < 2 ** 31:  # int32 arithmetic is ~2x faster
        indices = positions.astype(np.int32) % np.int32(cols)
    else:
        indices = (positions % cols).astype(np.int32)
    return positions, CSRPattern(torch.from_numpy(indptr), torch.from_numpy(indices), shape)


def gather_at(positions: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function taking a tensor's entries (flattened) at ``positions``, in the tensor's
    dtype, into a new 1-D tensor."""
    def take(t: torch.Tensor) -> torch.Tensor:
        flat = t.detach().reshape(-1)
        if not flat.is_contiguous():
            flat = flat.contiguous()
        if flat.dtype == torch.bfloat16:  # numpy has no bfloat16: move the same bits as int16
            return torch.from_numpy(np.take(flat.view(torch.int16).numpy(), positions)).view(flat.dtype)
        return torch.from_numpy(np.take(flat.numpy(), positions))
    return take


def keep_entries(module: nn.Module, keep: torch.Tensor,
                 optimizer: Optional[torch.optim.Optimizer]) -> None:
    """Shrink a sparse layer's pattern to the entries where ``keep`` (bool, one per
    current nonzero) is True. Survivors keep their value, gradient and every per-entry
    optimizer state tensor (momentum, Adam moments, ...); scalar state is untouched."""
    param = module.values
    old_nnz = param.numel()
    if keep.shape != (old_nnz,) or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor of shape ({old_nnz},), got "
                         f"{keep.dtype} {tuple(keep.shape)}")
    if optimizer is not None:
        check_optimizer(optimizer, param)
    pattern = module.pattern
    keep_np = keep.numpy()
    survivors = np.flatnonzero(keep_np)
    # A row's new start is the number of survivors before its old start.
    indptr = np.searchsorted(survivors, pattern.indptr.numpy()).astype(np.int64)
    indices = np.take(pattern.indices.numpy(), survivors)
    take = gather_at(survivors)
    new_pattern = CSRPattern(torch.from_numpy(indptr), torch.from_numpy(indices), pattern.shape)
    grad = param.grad
    new_grad = take(grad) if grad is not None and grad.shape == (old_nnz,) else None
    state = optimizer.state.get(param) if optimizer is not None else None
    moved = {}
    if state:
        moved = {key: take(value) for key, value in state.items()
                 if key != "step" and isinstance(value, torch.Tensor) and value.dim() == 1
                 and value.shape[0] == old_nnz}
    module.set_pattern(new_pattern, take(param))
    param.grad = new_grad
    if state:
        state.update(moved)

"""A pruner's pattern edits in O(nnz) passes, with no position search.

The general tools (``from_dense``, ``update_pattern``) accept any mask and find where each
entry went with a sorted search over all positions; on a 4096x4096 layer that is ~1 s per
mask update. A pruner's edits are of two simple kinds, and both keep CSR storage order:

* a masked dense layer becomes sparse: its nonzeros are the mask's True entries in
  row-major order, so values and optimizer state are plain gathers at those positions;
* a sparse layer keeps a subset of its entries: the survivors are a subsequence, so
  values, gradient and state are gathers at the survivors' indices.

Native passes on the kernels' threads (``_C.mask_row_pointer`` / ``mask_column_indices``,
``_C.gather_pattern``) build the pattern from the mask and gather at its positions; numpy
gathers the survivors of a sparse layer (its take is several times faster than torch's
index_select on two threads).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .. import _C
from .._backend import get_num_threads
from ..csr import CSRPattern
from ..optim_state import check_optimizer

__all__ = ["pattern_of_mask", "gather_pattern", "gather_at", "keep_entries"]


def pattern_of_mask(mask: torch.Tensor, shape: Tuple[int, int]) -> CSRPattern:
    """The pattern of a mask's nonzero entries, the mask viewed as ``shape`` (rows, cols)."""
    m = mask.detach().reshape(shape).contiguous()
    if m.dtype != torch.bool:
        m = m != 0
    bytes_ = m.numpy().view(np.uint8)
    threads = get_num_threads()
    # Outputs from torch.empty: numpy would back them with huge pages, whose first touch
    # costs about twice as much (measured on a 2-core VM: 37 vs 18 ms for 16.7M weights).
    indptr = torch.empty(shape[0] + 1, dtype=torch.int64).numpy()
    _C.mask_row_pointer(bytes_, threads, indptr)
    indices = torch.empty(int(indptr[-1]), dtype=torch.int32).numpy()
    _C.mask_column_indices(bytes_, indptr, threads, indices)
    return CSRPattern.adopt(indptr, indices, shape)


def _bits(t: torch.Tensor) -> np.ndarray:
    """A contiguous tensor's data as numpy (bfloat16, which numpy lacks, as its int16 bits)."""
    t = t.detach().contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def _tensor(bits: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    out = torch.from_numpy(bits)
    return out.view(dtype) if dtype == torch.bfloat16 else out


def gather_pattern(pattern: CSRPattern) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function taking a dense tensor's entries at ``pattern``'s positions (the tensor
    viewed as the pattern's shape), in CSR order and the tensor's dtype, as a new 1-D tensor."""
    indptr, indices = pattern.indptr.numpy(), pattern.indices.numpy()

    def take(t: torch.Tensor) -> torch.Tensor:
        dense = _bits(t).reshape(pattern.shape)
        out = torch.empty(pattern.nnz, dtype=t.dtype)
        _C.gather_pattern(dense, indptr, indices, get_num_threads(), _bits(out))
        return out
    return take


def gather_at(positions: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function taking a tensor's entries (flattened) at ``positions``, in the tensor's
    dtype, into a new 1-D tensor."""
    def take(t: torch.Tensor) -> torch.Tensor:
        return _tensor(np.take(_bits(t).reshape(-1), positions), t.dtype)
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
    new_pattern = CSRPattern.adopt(indptr, indices, pattern.shape)  # fresh arrays: no copy
    grad = param.grad
    new_grad = take(grad) if grad is not None and grad.shape == (old_nnz,) else None
    state = optimizer.state.get(param) if optimizer is not None else None
    moved = {}
    if state:
        moved = {key: take(value) for key, value in state.items()
                 if key != "step" and isinstance(value, torch.Tensor) and value.dim() == 1
                 and value.shape[0] == old_nnz}
    module.set_pattern(new_pattern, take(param), copy=False)
    param.grad = new_grad
    if state:
        state.update(moved)

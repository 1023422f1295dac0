"""A small caching allocator for the float32 tensors the sparse layers create.

A fresh multi-megabyte tensor costs a page fault per 4 KiB on first touch with
glibc's default malloc, which can take longer than the sparse kernel that fills
it. Outputs, gradients, layout copies and saved activations of the sparse
layers therefore come from this pool. A buffer is handed out again only once
nothing else holds its storage: the caller dropped the output (and every view
of it), the autograd graph that saved it was freed. ``empty_cache()`` releases
the pool.
"""
from __future__ import annotations

import math
from typing import Dict, List

import torch

_MAX_PER_SIZE = 4
_pool: Dict[int, List[torch.Tensor]] = {}
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _is_free(t: torch.Tensor) -> bool:
    # 2 = the pool's tensor + the temporary storage object made for the query.
    return _use_count(t.untyped_storage()._cdata) <= 2


def empty(*shape: int) -> torch.Tensor:
    """An uninitialized float32 tensor of ``shape``, reusing a free pooled buffer."""
    numel = math.prod(shape)
    if _use_count is None or numel == 0:
        return torch.empty(shape, dtype=torch.float32)
    bucket = _pool.setdefault(numel, [])
    for buf in bucket:
        if _is_free(buf):
            return buf.view(shape)
    buf = torch.empty(numel, dtype=torch.float32)
    if len(bucket) < _MAX_PER_SIZE:
        bucket.append(buf)
    return buf.view(shape)


def empty_cache() -> None:
    """Release every pooled buffer (they are re-created on demand)."""
    _pool.clear()

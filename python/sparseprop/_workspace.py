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
import threading
from typing import Dict, List

import torch

_MAX_PER_SIZE = 4
_SMALL = 16384  # floats (64 KiB)
_pool: Dict[int, List[torch.UntypedStorage]] = {}
_lock = threading.Lock()
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def empty(*shape: int) -> torch.Tensor:
    """An uninitialized contiguous float32 tensor of ``shape``, reusing a free pooled buffer.

    The tensor is set on the buffer's storage rather than being a view of another
    tensor, so autograd treats it like any fresh tensor (in-place ops allowed)."""
    numel = math.prod(shape)
    # Small buffers fault in a few pages at most: the pool's bookkeeping would cost more.
    if _use_count is None or numel < _SMALL:
        return torch.empty(shape, dtype=torch.float32)
    with _lock:  # the check and the hand-out must not interleave across threads
        bucket = _pool.setdefault(numel, [])
        for storage in bucket:
            if _use_count(storage._cdata) <= 1:  # only the pool holds it
                return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)
        tensor = torch.empty(shape, dtype=torch.float32)
        if len(bucket) < _MAX_PER_SIZE:
            bucket.append(tensor.untyped_storage())
        return tensor


def empty_cache() -> None:
    """Release every pooled buffer (they are re-created on demand)."""
    with _lock:
        _pool.clear()

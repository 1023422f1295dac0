"""A small caching allocator for the float32 tensors the sparse layers create.

A fresh multi-megabyte tensor costs a page fault per 4 KiB on first touch with
glibc's default malloc, which can take longer than the sparse kernel that fills
it. Outputs, gradients, layout copies and saved activations of the sparse
layers therefore come from this pool. A buffer is handed out again only once
nothing else holds its storage: the caller dropped the output (and every view
of it), the autograd graph that saved it was freed.

Memory stays bounded however shapes vary:

* buffers come in size classes (powers of two, in elements), so a request reuses
  any free buffer of its class: 200 different batch sizes share a handful of
  classes. Large buffers are mmapped by malloc and only the pages a request
  touches count in RSS, so rounding up costs little memory.
* the pool holds at most ``limit`` bytes (free and handed-out buffers together;
  default 256 MiB, env var ``SPARSEPROP_CACHE_LIMIT``, :func:`set_cache_limit`).
  A request that would exceed it first evicts free buffers, least recently used
  first; if that is not enough it gets an ordinary, unpooled tensor.
* :func:`empty_cache` drops every buffer and asks malloc to give free memory
  back to the OS (``malloc_trim`` on glibc).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import re
import threading
from collections import OrderedDict
from typing import Dict, List, Optional

import torch

ENV_VAR = "SPARSEPROP_CACHE_LIMIT"
DEFAULT_LIMIT = 256 * 2**20
_MAX_PER_CLASS = 16  # buffers of one size class alive at once (same-shaped layers)
_FLOAT_BYTES = 4
SMALL_NUMEL = 16384  # elements (64 KiB) below which buffers are not pooled
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}

_use_count = getattr(torch._C, "_storage_Use_Count", None)
_lock = threading.Lock()  # guards everything below
_classes: Dict[int, List[torch.UntypedStorage]] = {}  # size class (elements) -> buffers
_lru: "OrderedDict[int, tuple]" = OrderedDict()  # id(storage) -> (class, storage), oldest first
_held_bytes = 0


def parse_limit(text: str) -> int:
    """Bytes in ``text``: an integer with an optional K/M/G suffix (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)i?b?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise ValueError(f"{ENV_VAR} must be a number of bytes such as 268435456, 512M or 1G, "
                         f"got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).lower()]


def _limit_from_env() -> int:
    value = os.environ.get(ENV_VAR)
    return DEFAULT_LIMIT if value in (None, "") else parse_limit(value)


_limit = _limit_from_env()


def _size_class(numel: int) -> int:
    return 1 << (numel - 1).bit_length()


def _is_free(storage: torch.UntypedStorage) -> bool:
    return _use_count(storage._cdata) <= 1  # only the pool holds it


def empty(*shape: int) -> torch.Tensor:
    """An uninitialized contiguous float32 tensor of ``shape``, reusing a free pooled buffer.

    The tensor is set on the buffer's storage rather than being a view of another
    tensor, so autograd treats it like any fresh tensor (in-place ops allowed)."""
    numel = math.prod(shape)
    # Small buffers fault in a few pages at most: the pool's bookkeeping would cost more.
    if _use_count is None or numel < SMALL_NUMEL:
        return torch.empty(shape, dtype=torch.float32)
    size_class = _size_class(numel)
    # The check and the hand-out (set_, which takes a reference) must not interleave
    # across threads.
    with _lock:
        storage = _take_free(size_class)
        if storage is None:
            storage = _new_buffer(size_class)
        if storage is not None:
            return torch.empty(0, dtype=torch.float32).set_(storage, 0, shape)
    return torch.empty(shape, dtype=torch.float32)


def _take_free(size_class: int) -> Optional[torch.UntypedStorage]:
    for storage in _classes.get(size_class, ()):
        if _is_free(storage):
            _lru.move_to_end(id(storage))
            return storage
    return None


def _new_buffer(size_class: int) -> Optional[torch.UntypedStorage]:
    """A new pooled buffer of ``size_class`` elements, or None if the pool may not grow."""
    global _held_bytes
    nbytes = size_class * _FLOAT_BYTES
    if len(_classes.get(size_class, ())) >= _MAX_PER_CLASS or not _make_room(nbytes):
        return None
    storage = torch.empty(size_class, dtype=torch.float32).untyped_storage()
    _classes.setdefault(size_class, []).append(storage)
    _lru[id(storage)] = (size_class, storage)
    _held_bytes += nbytes
    return storage


def _make_room(nbytes: int) -> bool:
    """Evict free buffers, oldest first, until ``nbytes`` more fit under the limit."""
    if nbytes > _limit:
        return False
    for key, (size_class, storage) in list(_lru.items()):
        if _held_bytes + nbytes <= _limit:
            break
        if _is_free(storage):
            _drop(key, size_class, storage)
    return _held_bytes + nbytes <= _limit


def _drop(key: int, size_class: int, storage: torch.UntypedStorage) -> None:
    global _held_bytes
    del _lru[key]
    bucket = _classes[size_class]
    bucket.remove(storage)
    if not bucket:
        del _classes[size_class]
    _held_bytes -= size_class * _FLOAT_BYTES


def set_cache_limit(nbytes: int) -> None:
    """Let the pool hold at most ``nbytes`` bytes (0 turns pooling off). Free buffers
    beyond the new limit are released at once; handed-out ones when they come back."""
    global _limit
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"cache limit must be a non-negative int (bytes), got {nbytes!r}")
    with _lock:
        _limit = nbytes
        _make_room(0)
    trim_heap()


def get_cache_limit() -> int:
    """The most bytes the pool may hold."""
    return _limit


def cache_info() -> dict:
    """``{"limit", "held_bytes", "in_use_bytes", "buffers"}`` of the pool right now."""
    with _lock:
        in_use = sum(c * _FLOAT_BYTES for c, s in _lru.values() if not _is_free(s))
        return {"limit": _limit, "held_bytes": _held_bytes, "in_use_bytes": in_use,
                "buffers": len(_lru)}


def empty_cache() -> None:
    """Release every pooled buffer (they are re-created on demand) and return free
    memory to the OS where the C library allows it."""
    global _held_bytes
    with _lock:
        _classes.clear()
        _lru.clear()
        _held_bytes = 0
    trim_heap()


def _load_malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def trim_heap() -> None:
    # glibc keeps freed small and medium blocks in its heap; this returns whole free
    # pages of it to the OS.
    if _malloc_trim is not None:
        _malloc_trim(0)

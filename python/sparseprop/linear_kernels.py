"""The three passes of a sparse linear layer, shared by the eager autograd Function
(functional.py) and the torch.library custom ops (custom_ops.py).

Tensors are feature-major: x^T is (in, N), y^T is (out, N). float32 runs on the native
kernels; float64 is a correctness path (gradcheck) over torch ops on the CSR arrays,
vectorized over the nonzeros.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Optional

import torch

from . import _C, _workspace
from ._backend import as_numpy, get_num_threads
from .csr import CSRPattern

_cache_lock = threading.Lock()
_patterns: "OrderedDict[tuple, CSRPattern]" = OrderedDict()
_MAX_PATTERNS = 64


def pattern_of(indptr: torch.Tensor, indices: torch.Tensor, rows: int, cols: int) -> CSRPattern:
    """A validated CSRPattern for raw buffers, as the custom ops receive them.

    Validated once per (storage, shape) and reused while its checksum still matches:
    the ops see tensors, not the module's CSRPattern, so they keep their own cache."""
    key = (indptr.data_ptr(), indices.data_ptr(), indices.numel(), rows, cols)
    with _cache_lock:
        p = _patterns.get(key)
        if p is not None:
            _patterns.move_to_end(key)
    if p is not None and _same_contents(p, indptr, indices):
        return p
    p = CSRPattern(indptr, indices, (rows, cols))
    with _cache_lock:
        _patterns[key] = p
        while len(_patterns) > _MAX_PATTERNS:
            _patterns.popitem(last=False)
    return p


def _same_contents(p: CSRPattern, indptr: torch.Tensor, indices: torch.Tensor) -> bool:
    # The cached pattern holds private copies: compare them with the given buffers.
    if p.indptr is indptr and p.indices is indices:
        return p.is_current()
    return (_C.pattern_checksum(as_numpy(indptr.to(torch.int64).contiguous()),
                                as_numpy(indices.to(torch.int32).contiguous())) == p._sum)


def feature_major(x2d: torch.Tensor) -> torch.Tensor:
    """(C, N) contiguous tensor holding x2d^T, for an (N, C) matrix x2d.

    Free when x2d is itself a transposed view of such a tensor, which is what
    sparse layers return; otherwise one threaded, cache-blocked transpose."""
    xt = x2d.t()
    if xt.is_contiguous():
        return xt
    if x2d.dtype != torch.float32:
        return xt.contiguous()
    src = x2d.contiguous()
    out = _workspace.empty(*xt.shape)
    _C.transpose(as_numpy(src), as_numpy(out), get_num_threads())
    return out


def _rows_cols(pattern: CSRPattern):
    return pattern.row_indices(), pattern.indices.long()


def forward(pattern: CSRPattern, xt: torch.Tensor, values: torch.Tensor,
            bias: Optional[torch.Tensor]) -> torch.Tensor:
    """y^T = W x^T (+ bias), (out, N)."""
    n = xt.shape[1]
    if xt.dtype == torch.float64:
        rows, cols = _rows_cols(pattern)
        yt = xt.new_zeros(pattern.rows, n).index_add_(0, rows, values[:, None] * xt[cols])
        return yt if bias is None else yt + bias[:, None]
    indptr, indices = pattern.numpy()
    yt = _workspace.empty(pattern.rows, n)
    _C.spmm(indptr, indices, as_numpy(values), None, as_numpy(bias), as_numpy(xt),
            as_numpy(yt), get_num_threads())
    return yt


def grad_input(pattern: CSRPattern, gyt: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """dx^T = W^T dy^T, (in, N)."""
    n = gyt.shape[1]
    if gyt.dtype == torch.float64:
        rows, cols = _rows_cols(pattern)
        return gyt.new_zeros(pattern.cols, n).index_add_(0, cols, values[:, None] * gyt[rows])
    threads = get_num_threads()
    gxt = _workspace.empty(pattern.cols, n)
    if n == 1:  # batch 1: scatter along W's rows, no transposed pattern
        indptr, indices = pattern.numpy()
        _C.spmv_transposed(indptr, indices, as_numpy(values), as_numpy(gyt)[:, 0],
                           as_numpy(gxt)[:, 0], threads)
    else:
        t_indptr, t_indices, t_perm = pattern.transposed_numpy()
        _C.spmm(t_indptr, t_indices, as_numpy(values), t_perm, None, as_numpy(gyt),
                as_numpy(gxt), threads)
    return gxt


def grad_values(pattern: CSRPattern, gyt: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """dW at the pattern: <dy^T[row], x^T[col]> per nonzero, (nnz,)."""
    if gyt.dtype == torch.float64:
        rows, cols = _rows_cols(pattern)
        return (gyt[rows] * xt[cols]).sum(dim=1)
    indptr, indices = pattern.numpy()
    out = _workspace.empty(pattern.nnz)
    _C.sddmm(indptr, indices, as_numpy(gyt), as_numpy(xt), as_numpy(out), get_num_threads())
    return out

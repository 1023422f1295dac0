"""The eager SparseLinear call with as little around the kernels as possible.

One native call per pass (``_C.linear_forward`` / ``_C.linear_backward``, on raw
addresses), no numpy views, no dispatcher. The native calls recompute the pattern's
checksum first, so edits that bypass torch (``.data``, numpy views) are still caught
on every call, fused with the bounds guarantee the kernels need. Anything out of the
ordinary (tracing, torch.func, autocast, other dtypes, N-D inputs, a replaced
pattern) returns None and takes the general path in functional.py.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from . import _C, _workspace
from ._backend import get_num_threads
from .csr import CSRPattern
from .linear_kernels import feature_major

# Below this many gradient entries (rows x batch) the bias gradient is summed in the
# native call; above it torch's threaded sum is faster than the serial loop.
_NATIVE_BIAS_SUM = 1 << 16

_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) \
    or torch._dynamo.is_compiling
_peek_functorch = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack",
                          lambda: None)
_is_tracing = torch._C._is_tracing


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


class _Stale(Exception):
    """The pattern was edited in place since it was validated (checksum mismatch)."""


STALE_MESSAGE = ("the sparsity pattern (indptr/indices) was edited in place after it was "
                 "validated (e.g. between a forward pass and its backward); its derived data "
                 "would be stale. Change patterns between steps, with set_pattern / "
                 "sparseprop.update_pattern")


def try_linear(module, input: torch.Tensor) -> Optional[torch.Tensor]:
    """``module(input)`` for a SparseLinear on the short path, or None if it does not apply."""
    if (type(input) is not torch.Tensor or input.dim() != 2 or input.dtype is not torch.float32
            or input.shape[1] != module.in_features or not input.is_cpu or _is_compiling() or _is_tracing()
            or _peek_functorch() is not None or _autocast_on()):
        return None
    values, bias = module.values, module.bias
    p: CSRPattern = module._pattern
    buffers = module._buffers
    if (values.dtype is not torch.float32 or not values.is_contiguous()
            or values.shape != (p.indices.shape[0],)
            or buffers.get("indptr") is not p.indptr or buffers.get("indices") is not p.indices
            or (p.indptr.data_ptr(), p.indices.data_ptr()) != p._ptrs):
        return None
    if bias is not None and (bias.dtype is not torch.float32 or not bias.is_contiguous()
                             or bias.shape != (p.rows,)):
        return None
    try:
        out = _apply(input, values, bias, p, input.is_leaf and input.requires_grad)
    except _Stale:
        return None  # edited in place: the general path validates it again
    # y^T (out, N) is returned transposed outside the Function, so the result is an
    # ordinary view that in-place ops (ReLU(inplace=True)) may modify; y at batch 1.
    return out if input.shape[0] == 1 else out.t()


def _feature_major_view(x2d: torch.Tensor) -> bool:
    """Whether the (N, C) matrix x2d already is a contiguous (C, N) buffer read
    transposed (what sparse layers return; any (1, C) row): no copy, no view needed."""
    n, c = x2d.shape
    s0, s1 = x2d.stride()
    return (n <= 1 or s0 == 1) and (c <= 1 or s1 == n)


def _empty(rows: int, cols: int) -> torch.Tensor:
    if rows * cols < _workspace.SMALL_NUMEL:  # the pool would not keep it anyway
        return torch.empty(rows, cols, dtype=torch.float32)
    return _workspace.empty(rows, cols)


class _FastLinearFn(torch.autograd.Function):
    """y^T = W x^T + b, feature-major as in functional._SparseLinearFn, whose semantics
    (views returned, contiguous leaf gradients) this keeps. At batch 1 the row vector
    y (1, out) is the same buffer as y^T (out, 1): it is returned as it is, and the
    input gradient is made as a row, saving a view per tensor."""

    @staticmethod
    def forward(ctx, x2d, values, bias, pattern: CSRPattern, contiguous_grad_x: bool):
        n = x2d.shape[0]
        xt = x2d if _feature_major_view(x2d) else feature_major(x2d)  # xt.data_ptr(): x^T
        out = _empty(1, pattern.rows) if n == 1 else _empty(pattern.rows, n)
        indptr, indices = pattern._ptrs
        if not _C.linear_forward(indptr, indices, pattern.rows, pattern.indices.shape[0],
                                 pattern._sum, values.data_ptr(),
                                 0 if bias is None else bias.data_ptr(), xt.data_ptr(),
                                 out.data_ptr(), n, get_num_threads()):
            raise _Stale
        ctx.pattern = pattern
        ctx.contiguous_grad_x = contiguous_grad_x
        ctx.n = n
        ctx.save_for_backward(xt, values)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        p: CSRPattern = ctx.pattern
        xt, values = ctx.saved_tensors
        need_x, need_values, need_bias = ctx.needs_input_grad[:3]
        n = ctx.n
        if n == 1:  # (1, out): the same buffer as dy^T (out, 1) once contiguous
            gyt = grad_out if grad_out.is_contiguous() else grad_out.contiguous()
        else:
            gyt = feature_major(grad_out.t())  # (out, N); materializes stride-0 gradients
        gxt = None
        if need_x:
            gxt = _empty(1, p.cols) if n == 1 else _empty(p.cols, n)
        nnz = p.indices.shape[0]
        gv = torch.empty(nnz, dtype=torch.float32) if need_values and nnz < _workspace.SMALL_NUMEL \
            else (_workspace.empty(nnz) if need_values else None)
        native_bias = need_bias and p.rows * n <= _NATIVE_BIAS_SUM
        gb = torch.empty(p.rows, dtype=torch.float32) if native_bias else None
        t_indptr = t_indices = t_perm = 0
        if need_x and n != 1:
            t = p._t if p._t is not None else p.transposed
            t_indptr, t_indices, t_perm = (a.data_ptr() for a in t)
        if (p.indptr.data_ptr(), p.indices.data_ptr()) != p._ptrs:
            raise RuntimeError(STALE_MESSAGE)  # storage swapped between forward and backward
        indptr, indices = p._ptrs
        if not _C.linear_backward(indptr, indices, p.rows, p.cols, nnz, p._sum,
                                  values.data_ptr(), gyt.data_ptr(), xt.data_ptr(), n,
                                  0 if gxt is None else gxt.data_ptr(), t_indptr, t_indices,
                                  t_perm, 0 if gv is None else gv.data_ptr(),
                                  0 if gb is None else gb.data_ptr(), get_num_threads()):
            raise RuntimeError(STALE_MESSAGE)
        if need_bias and gb is None:
            gb = gyt.sum(dim=1)
        grad_x = gxt
        if need_x and n != 1:
            # As in functional._SparseLinearFn: a leaf input gets a contiguous .grad.
            grad_x = feature_major(gxt) if ctx.contiguous_grad_x else gxt.t()
        return grad_x, gv, gb, None, None


def _direct_apply():
    """``_FastLinearFn.apply`` without the Python wrapper's torch.func bookkeeping
    (unwrapping dead functorch wrappers), which try_linear has ruled out (no transform
    is active): a few microseconds per call. Falls back to the public apply."""
    base = getattr(torch._C, "_FunctionBase", None)
    raw = getattr(base, "__dict__", {}).get("apply")
    if raw is None or not hasattr(raw, "__get__"):
        return _FastLinearFn.apply
    return raw.__get__(None, _FastLinearFn)


_apply = _direct_apply()

"""Autograd functions over the native CSR kernels."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from . import _C, _workspace
from ._validation import check_float32_cpu  # noqa: F401  (also sparseprop.functional's)
from ._backend import as_numpy, get_num_threads
from .csr import CSRPattern


def feature_major(x2d: torch.Tensor) -> torch.Tensor:
    """(C, N) contiguous tensor holding x2d^T, for an (N, C) matrix x2d.

    Free when x2d is itself a transposed view of such a tensor, which is what
    sparse layers return; otherwise one threaded, cache-blocked transpose."""
    xt = x2d.t()
    if xt.is_contiguous():
        return xt
    src = x2d.contiguous()
    out = _workspace.empty(*xt.shape)
    _C.transpose(as_numpy(src), as_numpy(out), get_num_threads())
    return out


class _SparseLinearFn(torch.autograd.Function):
    """y = x W^T + b with W in CSR. Tensors cross to the kernels feature-major:
    x^T is (in, N), y^T is (out, N), so every kernel vectorizes over the batch.
    The output is returned as a transposed view of y^T, which the next sparse
    layer can read without a copy."""

    @staticmethod
    def forward(ctx, x2d, values, bias, pattern: CSRPattern, contiguous_grad_x: bool):
        indptr, indices = pattern.numpy()
        xt = feature_major(x2d)
        yt = _workspace.empty(pattern.rows, x2d.shape[0])
        _C.spmm(indptr, indices, as_numpy(values), None, as_numpy(bias), as_numpy(xt),
                as_numpy(yt), get_num_threads())
        ctx.pattern = pattern
        ctx.contiguous_grad_x = contiguous_grad_x
        ctx.save_for_backward(xt, values)
        return yt

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_yt):
        pattern: CSRPattern = ctx.pattern
        xt, values = ctx.saved_tensors
        need_x, need_values, need_bias = ctx.needs_input_grad[:3]
        threads = get_num_threads()
        gyt = feature_major(grad_yt.t())  # (out, N); materializes stride-0 gradients
        grad_x = grad_values = grad_bias = None
        if need_x:
            gxt = _workspace.empty(pattern.cols, gyt.shape[1])
            if gyt.shape[1] == 1:  # batch 1: scatter along W's rows, no transposed pattern
                indptr, indices = pattern.numpy()
                _C.spmv_transposed(indptr, indices, as_numpy(values), as_numpy(gyt)[:, 0],
                                   as_numpy(gxt)[:, 0], threads)
            else:
                t_indptr, t_indices, t_perm = pattern.transposed_numpy()
                _C.spmm(t_indptr, t_indices, as_numpy(values), t_perm, None, as_numpy(gyt),
                        as_numpy(gxt), threads)
            # A leaf input would have torch copy the transposed view into a
            # contiguous .grad (slowly); everyone else takes the view for free.
            grad_x = feature_major(gxt) if ctx.contiguous_grad_x else gxt.t()
        if need_values:
            indptr, indices = pattern.numpy()
            grad_values = _workspace.empty(pattern.nnz)
            _C.sddmm(indptr, indices, as_numpy(gyt), as_numpy(xt), as_numpy(grad_values), threads)
        if need_bias:
            grad_bias = gyt.sum(dim=1)
        return grad_x, grad_values, grad_bias, None, None


def sparse_linear(input: torch.Tensor, pattern: CSRPattern, values: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``input @ W.T + bias`` where W has nonzeros ``values`` at ``pattern`` (out, in).

    ``input`` has shape (*, in_features) like for :func:`torch.nn.functional.linear`.
    Gradients flow to ``input``, ``values`` and ``bias``; double backward is not supported.
    """
    if not isinstance(pattern, CSRPattern):
        raise TypeError(f"pattern must be a sparseprop.CSRPattern, got {type(pattern).__name__}")
    check_float32_cpu(input, "input")
    check_float32_cpu(values, "values")
    if values.shape != (pattern.nnz,):
        raise ValueError(f"values must have shape ({pattern.nnz},) to match the pattern, "
                         f"got {tuple(values.shape)}")
    if bias is not None:
        check_float32_cpu(bias, "bias")
        if bias.shape != (pattern.rows,):
            raise ValueError(f"bias must have shape ({pattern.rows},), got {tuple(bias.shape)}")
    if input.dim() == 0 or input.shape[-1] != pattern.cols:
        raise ValueError(f"input must have shape (*, {pattern.cols}), got {tuple(input.shape)}")
    # A 2-D input is used as it is: every reshape would be one more autograd
    # node, which costs as much as the kernels of a small layer.
    lead = input.shape[:-1]
    x2d = input if input.dim() == 2 else input.reshape(math.prod(lead), pattern.cols)
    # The Function returns y^T (out, N); transposing outside it keeps the result
    # an ordinary view that in-place ops (ReLU(inplace=True)) may modify.
    yt = _SparseLinearFn.apply(x2d, values.contiguous(),
                                None if bias is None else bias.contiguous(), pattern,
                                input.is_leaf and input.requires_grad)
    return yt.t() if input.dim() == 2 else yt.t().reshape(*lead, pattern.rows)


def sparse_conv2d(*args, **kwargs):
    """See :func:`sparseprop.conv.sparse_conv2d`."""
    from .conv import sparse_conv2d as impl

    return impl(*args, **kwargs)

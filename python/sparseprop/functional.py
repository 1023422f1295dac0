"""Autograd functions over the native CSR kernels."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from . import custom_ops
from . import linear_kernels as K
from ._validation import check_float32_cpu, check_float_cpu, check_linear_input  # noqa: F401  (also sparseprop.functional's)
from .csr import CSRPattern
from .linear_kernels import feature_major  # noqa: F401  (re-exported: conv and others use it)


def autocast_dtype() -> Optional[torch.dtype]:
    """The CPU autocast dtype if autocast is on (torch >= 2.4 API, older fallback)."""
    try:
        on = torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        on = torch.is_autocast_cpu_enabled()
    if not on:
        return None
    try:
        return torch.get_autocast_dtype("cpu")
    except (AttributeError, TypeError):
        return torch.get_autocast_cpu_dtype()


def compute_dtypes(input: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor]):
    """(compute dtype, result dtype) for a sparse layer call.

    Under CPU autocast the layer computes in float32 and returns the autocast dtype, as
    linear/conv do. Outside it: float32 and float64 compute as they are (all operands
    alike); bfloat16/float16 inputs or values compute in float32 and the result has the
    input's dtype."""
    cast = autocast_dtype()
    if cast is not None and input.dtype != torch.float64:
        return torch.float32, cast
    dtypes = {input.dtype, values.dtype} | ({bias.dtype} if bias is not None else set())
    if dtypes == {torch.float32} or dtypes == {torch.float64}:
        return input.dtype, input.dtype
    if torch.float64 in dtypes:
        raise TypeError(f"input, values and bias must all be float64 for the float64 path, got "
                        f"{sorted(str(d) for d in dtypes)}")
    return torch.float32, input.dtype


def _functorch_active() -> bool:
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling() if hasattr(torch, "_dynamo") else False


def use_custom_ops(x: torch.Tensor) -> bool:
    """Whether a call must go through the torch.library ops: something is tracing
    (Dynamo, export, jit, fake tensors) or a torch.func transform is active. Plain
    eager calls skip the dispatcher (the ops cost ~3x the kernels of a small layer)."""
    if not custom_ops.AVAILABLE:
        return False
    return (type(x) is not torch.Tensor or _is_compiling() or torch.jit.is_tracing()
            or _functorch_active())


class _SparseLinearFn(torch.autograd.Function):
    """y = x W^T + b with W in CSR: the eager path (no dispatcher). Tensors cross to the
    kernels feature-major: x^T is (in, N), y^T is (out, N), so every kernel vectorizes
    over the batch. The output is returned as a transposed view of y^T, which the next
    sparse layer can read without a copy. The passes are linear_kernels', shared with
    the custom ops."""

    @staticmethod
    def forward(ctx, x2d, values, bias, pattern: CSRPattern, contiguous_grad_x: bool):
        xt = feature_major(x2d)
        yt = K.forward(pattern, xt, values, bias)
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
        gyt = feature_major(grad_yt.t())  # (out, N); materializes stride-0 gradients
        grad_x = grad_values = grad_bias = None
        if need_x:
            gxt = K.grad_input(pattern, gyt, values)
            # A leaf input would have torch copy the transposed view into a
            # contiguous .grad (slowly); everyone else takes the view for free.
            grad_x = feature_major(gxt) if ctx.contiguous_grad_x else gxt.t()
        if need_values:
            grad_values = K.grad_values(pattern, gyt, xt)
        if need_bias:
            grad_bias = gyt.sum(dim=1)
        return grad_x, grad_values, grad_bias, None, None


def _check_call(input, values, bias, rows: int, cols: int, nnz: int) -> None:
    check_linear_input(input, cols)
    check_float_cpu(values, "values")
    if values.shape != (nnz,):
        raise ValueError(f"values must have shape ({nnz},) to match the pattern, "
                         f"got {tuple(values.shape)}")
    if bias is not None:
        check_float_cpu(bias, "bias")
        if bias.shape != (rows,):
            raise ValueError(f"bias must have shape ({rows},), got {tuple(bias.shape)}")


def sparse_linear(input: torch.Tensor, pattern: CSRPattern, values: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``input @ W.T + bias`` where W has nonzeros ``values`` at ``pattern`` (out, in).

    ``input`` has shape (*, in_features) like for :func:`torch.nn.functional.linear`.
    Gradients flow to ``input``, ``values`` and ``bias``; double backward is not supported.
    dtypes: see :func:`compute_dtypes`.
    """
    if not isinstance(pattern, CSRPattern):
        raise TypeError(f"pattern must be a sparseprop.CSRPattern, got {type(pattern).__name__}")
    return sparse_linear_buffers(input, pattern.indptr, pattern.indices, pattern.rows,
                                 pattern.cols, values, bias, pattern)


def sparse_linear_buffers(input: torch.Tensor, indptr: torch.Tensor, indices: torch.Tensor,
                          rows: int, cols: int, values: torch.Tensor,
                          bias: Optional[torch.Tensor] = None,
                          pattern: Optional[CSRPattern] = None) -> torch.Tensor:
    """:func:`sparse_linear` on raw pattern buffers (what a traced module passes: the
    ops validate and cache the pattern themselves). ``pattern``, when given, is the
    already-validated CSRPattern of these buffers, used by the eager path."""
    _check_call(input, values, bias, rows, cols, indices.shape[0])
    compute, result = compute_dtypes(input, values, bias)
    if input.dtype != compute:
        input = input.to(compute)
    if values.dtype != compute:
        values = values.to(compute)
    if bias is not None and bias.dtype != compute:
        bias = bias.to(compute)
    # A 2-D input is used as it is: every reshape would be one more autograd
    # node, which costs as much as the kernels of a small layer.
    lead = input.shape[:-1]
    x2d = input if input.dim() == 2 else input.reshape(math.prod(lead), cols)
    values = values.contiguous()
    bias = None if bias is None else bias.contiguous()
    if custom_ops.AVAILABLE and _functorch_active() and not _is_compiling():
        yt = custom_ops.LinearFuncFn.apply(x2d, values, bias, indptr, indices, rows)
    elif custom_ops.AVAILABLE and (pattern is None or use_custom_ops(x2d)):
        yt = custom_ops.linear(x2d, values, bias, indptr, indices, rows)
    else:
        if pattern is None:
            pattern = K.pattern_of(indptr, indices, rows, cols)
        # The Function returns y^T (out, N); transposing outside it keeps the result
        # an ordinary view that in-place ops (ReLU(inplace=True)) may modify.
        yt = _SparseLinearFn.apply(x2d, values, bias, pattern,
                                    input.is_leaf and input.requires_grad)
    y = yt.t() if input.dim() == 2 else yt.t().reshape(*lead, rows)
    return y if y.dtype == result else y.to(result)


def sparse_conv2d(*args, **kwargs):
    """See :func:`sparseprop.conv.sparse_conv2d`."""
    from .conv.entry import sparse_conv2d as impl

    return impl(*args, **kwargs)

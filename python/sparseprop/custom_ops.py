"""torch.library custom ops for the sparse linear passes: what torch.compile,
torch.export and torch.func see.

``sparseprop::linear(x2d, values, bias, indptr, indices, rows) -> y^T`` with fake
(meta) implementations, registered autograd (two backward ops, themselves custom ops)
and vmap rules. The eager path (functional.py) skips the dispatcher when nothing is
tracing: both call the same passes in linear_kernels.py.

Requires torch >= 2.4 (``torch.library.custom_op``); on older torch ``AVAILABLE`` is
False and every call takes the eager autograd Function (compile then graph-breaks at
sparse layers, as before).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import linear_kernels as K

AVAILABLE = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_autograd")
_HAS_VMAP = hasattr(torch.library, "register_vmap")

if AVAILABLE:

    @torch.library.custom_op("sparseprop::linear", mutates_args=())
    def linear(x2d: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor],
               indptr: torch.Tensor, indices: torch.Tensor, rows: int) -> torch.Tensor:
        """y^T (rows, N) for x2d (N, cols)."""
        p = K.pattern_of(indptr, indices, rows, x2d.shape[1])
        return _fresh(K.forward(p, K.feature_major(x2d), values, bias), x2d, values, bias)

    @linear.register_fake
    def _(x2d, values, bias, indptr, indices, rows):
        return x2d.new_empty(rows, x2d.shape[0])

    @torch.library.custom_op("sparseprop::linear_grad_input", mutates_args=())
    def linear_grad_input(gyt: torch.Tensor, values: torch.Tensor, indptr: torch.Tensor,
                          indices: torch.Tensor, cols: int) -> torch.Tensor:
        """dx (N, cols), contiguous, for dy^T (rows, N)."""
        p = K.pattern_of(indptr, indices, indptr.numel() - 1, cols)
        return K.grad_input(p, gyt.contiguous(), values).t().contiguous()

    @linear_grad_input.register_fake
    def _(gyt, values, indptr, indices, cols):
        return gyt.new_empty(gyt.shape[1], cols)

    @torch.library.custom_op("sparseprop::linear_grad_values", mutates_args=())
    def linear_grad_values(gyt: torch.Tensor, x2d: torch.Tensor, indptr: torch.Tensor,
                           indices: torch.Tensor) -> torch.Tensor:
        """dvalues (nnz,) for dy^T (rows, N) and x2d (N, cols)."""
        p = K.pattern_of(indptr, indices, indptr.numel() - 1, x2d.shape[1])
        return K.grad_values(p, gyt.contiguous(), K.feature_major(x2d))

    @linear_grad_values.register_fake
    def _(gyt, x2d, indptr, indices):
        return gyt.new_empty(indices.shape[0])

    def _setup_context(ctx, inputs, output):
        x2d, values, bias, indptr, indices, rows = inputs
        ctx.has_bias = bias is not None
        ctx.save_for_backward(x2d, values, indptr, indices)

    def _backward(ctx, gyt):
        # Detached: double backward is not supported, and an input that requires grad
        # would send the backward ops through autograd (which torch.func refuses).
        x2d, values, indptr, indices = (t.detach() for t in ctx.saved_tensors)
        gyt = gyt.detach()
        need_x, need_values, need_bias = ctx.needs_input_grad[:3]
        gx = linear_grad_input(gyt, values, indptr, indices, x2d.shape[1]) if need_x else None
        gv = linear_grad_values(gyt, x2d, indptr, indices) if need_values else None
        gb = gyt.sum(dim=1) if (need_bias and ctx.has_bias) else None
        return gx, gv, gb, None, None, None

    linear.register_autograd(_backward, setup_context=_setup_context)

    # Backward ops are differentiable in their first-order inputs only through the
    # forward op (double backward is not supported), so they register no autograd.

    if _HAS_VMAP:
        def _move(t, bdim, size):
            """t with its batch dimension first (expanded when it has none)."""
            if t is None:
                return None
            if bdim is None:
                return t.unsqueeze(0).expand(size, *t.shape)
            return t.movedim(bdim, 0)

        def _batch_size(args, dims):
            return next(a.shape[d] for a, d in zip(args, dims)
                        if d is not None and isinstance(a, torch.Tensor))

        @torch.library.register_vmap("sparseprop::linear")
        def _(info, in_dims, x2d, values, bias, indptr, indices, rows):
            xd, vd, bd, pd, id_ = in_dims[:5]
            if pd is not None or id_ is not None:
                raise ValueError("vmap over the sparsity pattern is not supported")
            if vd is None and bd is None:  # one weight for all samples: one wide call
                b = info.batch_size
                xs = x2d.movedim(xd, 0)
                yt = linear(xs.reshape(-1, xs.shape[-1]), values, bias, indptr, indices, rows)
                return yt.reshape(rows, b, xs.shape[1]), 1
            b = info.batch_size
            xs, vs = _move(x2d, xd, b), _move(values, vd, b)
            bs = _move(bias, bd, b) if bias is not None else [None] * b
            return torch.stack([linear(xs[i], vs[i], bs[i], indptr, indices, rows)
                                for i in range(b)]), 0

        @torch.library.register_vmap("sparseprop::linear_grad_input")
        def _(info, in_dims, gyt, values, indptr, indices, cols):
            gd, vd = in_dims[:2]
            b = info.batch_size
            if vd is None:  # one weight: samples side by side along the batch (columns)
                gs = gyt.movedim(gd, 0)  # (B, rows, N)
                n = gs.shape[2]
                wide = gs.permute(1, 0, 2).reshape(gs.shape[1], b * n)
                return linear_grad_input(wide, values, indptr, indices, cols).reshape(b, n, cols), 0
            gs, vs = _move(gyt, gd, b), _move(values, vd, b)
            return torch.stack([linear_grad_input(gs[i], vs[i], indptr, indices, cols)
                                for i in range(b)]), 0

        @torch.library.register_vmap("sparseprop::linear_grad_values")
        def _(info, in_dims, gyt, x2d, indptr, indices):
            gd, xd = in_dims[:2]
            b = info.batch_size
            gs, xs = _move(gyt, gd, b), _move(x2d, xd, b)
            return torch.stack([linear_grad_values(gs[i], xs[i], indptr, indices)
                                for i in range(b)]), 0


def _fresh(out: torch.Tensor, *inputs) -> torch.Tensor:
    """Custom ops may not return an alias of an input (float64 with no nonzeros can)."""
    for t in inputs:
        if t is not None and out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
            return out.clone()
    return out


if AVAILABLE:

    class LinearFuncFn(torch.autograd.Function):
        """The ops under torch.func transforms (grad, vmap, per-sample gradients):
        torch.func needs an autograd.Function with setup_context, which the op's own
        registered autograd is not. Forward and backward are the same custom ops, so
        vmap is generated from their batch rules."""

        generate_vmap_rule = True

        @staticmethod
        def forward(x2d, values, bias, indptr, indices, rows):
            # Below autograd: this Function is the autograd node (the op's own
            # registered autograd is not usable under torch.func).
            with torch._C._AutoDispatchBelowAutograd():
                return linear(x2d, values, bias, indptr, indices, rows)

        @staticmethod
        def setup_context(ctx, inputs, output):
            _setup_context(ctx, inputs, output)

        @staticmethod
        def backward(ctx, gyt):
            with torch._C._AutoDispatchBelowAutograd():
                return _backward(ctx, gyt)

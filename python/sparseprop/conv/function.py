"""SparseConv2dFn: the one autograd Function of sparse convolutions, over a plan of either
data layout (the ConvPlan interface of plans.py)."""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..csr import CSRPattern
from .plans import ConvPlan


class SparseConv2dFn(torch.autograd.Function):
    """y = conv(x) with the nonzeros ``values`` at ``pattern``, computed by ``plan``."""

    @staticmethod
    def forward(ctx, x, values, bias, pattern: CSRPattern, plan: ConvPlan):
        ctx.pattern, ctx.plan = pattern, plan
        # Save the input, not its padded phase copy: like nn.Conv2d, the conv then keeps
        # no activation-sized memory of its own alive until backward (the input is kept
        # anyway by whoever produced it, e.g. a ReLU), at the price of redoing the copy.
        ctx.save_for_backward(x, values)
        return plan.forward(x, values, bias, pattern)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        pattern, plan = ctx.pattern, ctx.plan
        pattern.expect_current()  # the plan was built from the pattern the forward saw
        x, values = ctx.saved_tensors
        need_x, need_values, need_bias = ctx.needs_input_grad[:3]
        grad_x, grad_values, grad_bias = plan.backward(grad_y, x, values, pattern, need_x,
                                                       need_values, need_bias)
        return grad_x, grad_values, grad_bias, None, None

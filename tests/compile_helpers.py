"""Shared check of the compile tests: a compiled module's training step equals eager."""
from __future__ import annotations

import torch
from torch import nn


def assert_step_matches(net: nn.Module, compiled, ref: nn.Module, x: torch.Tensor,
                        atol: float = 1e-5, grad_atol: float = 1e-5) -> None:
    """``compiled`` (compiling ``net``) and ``ref`` (an eager deep copy of ``net``) give the
    same output, input gradient (``atol``) and parameter gradients (``grad_atol``) for
    ``x``, under the loss ``sum(y**2)``."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = compiled(xa), ref(xb)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=atol)
    y.square().sum().backward()
    y_ref.square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=atol)
    for (name, a), b in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=grad_atol,
                                   msg=lambda m: f"{name}: {m}")

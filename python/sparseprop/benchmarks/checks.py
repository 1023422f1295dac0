"""Dense vs sparse agreement, checked before anything is timed (a benchmark of a
broken path would be meaningless)."""
from __future__ import annotations

import torch
from torch import nn

from .._timing import trainable_params


def _reset_grads(x: torch.Tensor, *modules: nn.Module) -> None:
    x.grad = None
    for m in modules:
        for p in trainable_params(m):
            p.grad = None


def max_abs_error(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    """Largest absolute difference of outputs and input gradients, dense vs sparse."""
    outs = []
    for m in (dense, sparse):
        x.grad = None
        y = m(x)
        y.backward(grad)
        outs.append((y.detach().clone(), x.grad.clone()))
    _reset_grads(x, dense, sparse)
    (yd, gd), (ys, gs) = outs
    return max(float((yd - ys).abs().max()) if yd.numel() else 0.0,
               float((gd - gs).abs().max()) if gd.numel() else 0.0)


def rel_err(ref: torch.Tensor, other: torch.Tensor) -> float:
    """max |ref - other| / max |ref| (plain difference when ref is all zeros)."""
    if ref.numel() == 0:
        return 0.0
    diff = float((ref - other).abs().max())
    scale = float(ref.abs().max())
    return diff / scale if scale > 0 else diff


def max_rel_error(dense: nn.Module, sparse: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    """Largest normalized difference (:func:`rel_err`) of outputs, input gradients and
    weight gradients (the dense gradient read at the sparse pattern), dense vs sparse:
    ``sparse`` is a sparse layer (``pattern``, ``pattern_shape``, ``values``), ``dense``
    its dense twin."""
    got = []
    for m in (dense, sparse):
        _reset_grads(x, m)
        y = m(x)
        y.backward(grad)
        w_grad = (sparse.pattern.gather(m.weight.grad.reshape(sparse.pattern_shape))
                  if m is dense else m.values.grad)
        got.append((y.detach(), x.grad.clone(), w_grad.clone()))
    _reset_grads(x, dense, sparse)
    return max(rel_err(a, b) for a, b in zip(*got))

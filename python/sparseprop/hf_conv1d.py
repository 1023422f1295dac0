"""GPT-2's ``transformers.pytorch_utils.Conv1D`` (a linear layer stored transposed) in sparse form.

``Conv1D(nf, nx)`` computes ``x @ weight + bias`` with ``weight`` of shape ``(nx, nf)``: an
``nn.Linear(nx, nf)`` whose weight is ``weight.T``. Its sparse form is a ``SparseLinear`` over
that transposed weight; the thin subclass :class:`SparseConv1D` only remembers where it came
from, so :func:`sparseprop.densify` gives a ``Conv1D`` back (the layout GPT-2's checkpoints
expect). Its state-dict keys are SparseLinear's (``values``, ``indptr``, ``indices``, ``bias``).

transformers is never imported here: a model that holds a Conv1D has imported it already.
"""
from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import nn

from .modules import SparseLinear

__all__ = ["SparseConv1D", "conv1d_class", "is_conv1d"]


def conv1d_class() -> Optional[type]:
    """``transformers.pytorch_utils.Conv1D`` if transformers is already imported, else None."""
    mod = sys.modules.get("transformers.pytorch_utils")
    return getattr(mod, "Conv1D", None) if mod is not None else None


def is_conv1d(module: nn.Module) -> bool:
    cls = conv1d_class()
    return cls is not None and isinstance(module, cls)


class SparseConv1D(SparseLinear):
    """A ``SparseLinear(nx, nf)`` standing in for a ``Conv1D(nf, nx)``; ``to_dense()`` is a Conv1D.

    ``weight`` (the dense view) is in Linear orientation, ``(nf, nx)``; ``to_dense().weight`` is
    Conv1D's ``(nx, nf)``. Inputs ``(*, nx)``, outputs ``(*, nf)``, as for Conv1D.
    """

    @property
    def nf(self) -> int:
        return self.out_features

    @property
    def nx(self) -> int:
        return self.in_features

    @classmethod
    def from_dense(cls, conv1d: nn.Module, mask: Optional[torch.Tensor] = None,
                   sparsity: Optional[float] = None) -> "SparseConv1D":
        """Sparse copy of a ``Conv1D``; ``mask`` (if given) has Conv1D's weight shape (nx, nf)."""
        if not is_conv1d(conv1d):
            raise TypeError(f"SparseConv1D.from_dense expects a transformers Conv1D, "
                            f"got {type(conv1d).__name__}")
        module = cls(conv1d.nx, conv1d.nf, bias=conv1d.bias is not None, sparsity=1.0,
                     dtype=conv1d.weight.dtype)
        module._load_dense(conv1d.weight.detach().t(), conv1d.bias,
                           None if mask is None else mask.t(), sparsity)
        return module

    def to_dense(self) -> nn.Module:
        """A ``transformers`` ``Conv1D`` with the same outputs (zeros off the pattern)."""
        from transformers.pytorch_utils import Conv1D  # only reachable with transformers

        dense = Conv1D(self.nf, self.nx).to(self.values.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.weight.t())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
            else:
                dense.bias.zero_()  # Conv1D always has a bias; zero is the same function
        return dense

"""Deprecated: the CIFAR ResNet builders moved to :mod:`sparseprop.benchmarks.resnet_models`
(they serve the benchmarks and tests; they are not part of the API users import).

``sparseprop.models.resnet18_cifar`` and the other old names still work, with a
DeprecationWarning; :func:`densify` (already deprecated) is :func:`sparseprop.densify`.
"""
from __future__ import annotations

import warnings

from torch import nn

from ._deprecation import moved_names
from ._sparse_module import SparseWeightModule
from .convert import densify as convert_densify

__getattr__ = moved_names("sparseprop.models", {
    name: "sparseprop.benchmarks.resnet_models"
    for name in ("BasicBlock", "ResNetCIFAR", "resnet18_cifar", "sparsify_convs", "conv_names",
                 "count_params")})


def densify(model: nn.Module) -> nn.Module:
    """Deprecated: :func:`sparseprop.densify` (the same, in place by default).

    Replaces every sparse layer of ``model`` (in place) by its dense twin and returns
    ``model``; a bare sparse layer (nothing to replace it in) raises ValueError."""
    warnings.warn("sparseprop.models.densify is deprecated; use sparseprop.densify(model), "
                  "which does the same", DeprecationWarning, stacklevel=2)
    if isinstance(model, SparseWeightModule):
        raise ValueError(f"cannot replace the model itself ({type(model).__name__}) in place; "
                         f"wrap it in a container first")
    return convert_densify(model, inplace=True)

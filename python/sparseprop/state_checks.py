"""Checking a state dict against a model before anything is loaded (all-or-nothing).

Below the layers on purpose: ``SparseWeightModule.load_state_dict`` calls
:func:`check_state_dict`, so a sparse layer is recognised here by its ``check_state``
method, not by its class.
"""
from __future__ import annotations

from typing import Any, List, Mapping

import torch
from torch import nn

__all__ = ["SPARSE_STATE_KEYS", "check_state_dict"]

# What a sparse layer saves instead of ``weight``: its nonzeros and its CSR pattern.
SPARSE_STATE_KEYS = ("values", "indptr", "indices")


def _is_sparse_layer(module: nn.Module) -> bool:
    return callable(getattr(module, "check_state", None))


def _hint(missing: List[str], unexpected: List[str]) -> str:
    sparse_extra = any(k.rpartition(".")[2] in SPARSE_STATE_KEYS for k in unexpected)
    dense_missing = any(k.rpartition(".")[2] == "weight" for k in missing)
    if sparse_extra and dense_missing:
        return (" (the checkpoint has sparse layers where the model is dense: use "
                "sparseprop.load_dense_state_dict, or sparseprop.sparsify the model first)")
    if any(k.rpartition(".")[2] in SPARSE_STATE_KEYS for k in missing) and \
            any(k.rpartition(".")[2] == "weight" for k in unexpected):
        return (" (the checkpoint is dense where the model is sparse: load it into the dense "
                "model, then sparseprop.sparsify it)")
    return ""


def _filled_by_torch(model: nn.Module, key: str, metadata: Mapping[str, Any]) -> bool:
    """BatchNorm fills in a missing ``num_batches_tracked`` of a pre-version-2 checkpoint."""
    prefix, _, leaf = key.rpartition(".")
    if leaf != "num_batches_tracked":
        return False
    module = model.get_submodule(prefix)
    version = metadata.get(prefix, {}).get("version")
    return isinstance(module, nn.modules.batchnorm._NormBase) and (version is None or version < 2)


def check_state_dict(model: nn.Module, state_dict, strict: bool = True) -> None:
    """Raise unless ``model.load_state_dict(state_dict, strict)`` would load every entry:

    * every sparse layer's entries pass its ``check_state``: ``indptr`` / ``indices``
      together, a valid pattern of the layer's shape, ``values`` with one entry per
      nonzero, every entry a tensor (ValueError naming the key);
    * with ``strict``, no key is missing or unexpected (RuntimeError, as load_state_dict);
    * every other entry is a tensor of the model's shape (RuntimeError).

    Nothing is changed.
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    current = model.state_dict(keep_vars=True)
    sparse_keys = set()
    for name, module in model.named_modules():
        if not _is_sparse_layer(module):
            continue
        prefix = name + "." if name else ""
        sparse_keys.update(prefix + k for k in SPARSE_STATE_KEYS)
        module.check_state(state_dict, prefix)
    errors = []
    if strict:
        metadata = getattr(state_dict, "_metadata", None) or {}
        missing = [k for k in current if k not in state_dict and not _filled_by_torch(model, k, metadata)]
        unexpected = [k for k in state_dict if k not in current]
        if missing:
            errors.append(f"Missing key(s) in state_dict: {missing}")
        if unexpected:
            errors.append(f"Unexpected key(s) in state_dict: {unexpected}")
        if errors:
            errors[-1] += _hint(missing, unexpected)
    for key, mine in current.items():
        if key in sparse_keys or key not in state_dict or not isinstance(mine, torch.Tensor):
            continue
        theirs = state_dict[key]
        if not isinstance(theirs, torch.Tensor):
            errors.append(f"'{key}' is a {type(theirs).__name__}, expected a tensor")
            continue
        if tuple(theirs.shape) != tuple(mine.shape) and not (mine.dim() == 0 and theirs.shape == (1,)):
            errors.append(f"size mismatch for {key}: copying a param with shape "
                          f"{tuple(theirs.shape)}, the shape in the current model is "
                          f"{tuple(mine.shape)}")
    if errors:
        raise RuntimeError(f"Error(s) in loading state_dict for {type(model).__name__} "
                           f"(nothing was loaded):\n\t" + "\n\t".join(errors))

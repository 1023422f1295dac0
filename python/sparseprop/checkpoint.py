"""Checkpoints of models with sparse layers.

A sparse layer saves ``<prefix>values`` (float32, nnz), ``<prefix>indptr`` (int64, rows+1)
and ``<prefix>indices`` (int32, nnz) instead of ``<prefix>weight``. Such a state dict loads
into any model of the same architecture with sparse layers at the same places (their
patterns are replaced). These helpers cover the rest:

* :func:`densify_state_dict` / :func:`load_dense_state_dict`: into a dense model;
* :func:`safe_load_state_dict`: validate everything first (:func:`check_state_dict`), so a
  truncated or tampered checkpoint raises without changing any layer. A sparse layer's own
  ``load_state_dict`` does the same; inside a larger model's ``load_state_dict`` each
  sparse layer is still checked in full before it changes.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Any, List, Mapping, Tuple

import torch
from torch import nn

from ._sparse_module import PATTERN_BUFFERS, SparseWeightModule
from .csr import CSRPattern
from .hf_conv1d import is_conv1d

__all__ = ["check_state_dict", "densify_state_dict", "load_dense_state_dict", "read_checkpoint",
           "safe_load_state_dict", "sparse_prefixes"]

_SPARSE_KEYS = ("values",) + PATTERN_BUFFERS


def sparse_prefixes(state_dict: Mapping[str, Any]) -> List[str]:
    """Prefixes (``"encoder.fc1."``, or ``""`` for a bare layer) of the sparse layers whose
    ``values`` / ``indptr`` / ``indices`` entries are in ``state_dict``."""
    found = []
    for key in state_dict:
        if key == "indptr" or key.endswith(".indptr"):
            prefix = key[: -len("indptr")]
            if prefix + "indices" in state_dict:
                found.append(prefix)
    return found


def _pattern_from(state_dict, prefix: str, shape: Tuple[int, ...], where: str) -> CSRPattern:
    """Validated pattern of ``prefix`` for a dense weight ``shape``; ValueError otherwise."""
    rows, cols = shape[0], math.prod(shape[1:])
    try:
        pattern = CSRPattern(state_dict[prefix + "indptr"], state_dict[prefix + "indices"],
                             (rows, cols))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None
    values = state_dict.get(prefix + "values")
    if values is not None:
        if not isinstance(values, torch.Tensor):
            raise ValueError(f"{where}: values is a {type(values).__name__}, not a tensor")
        if tuple(values.shape) != (pattern.nnz,):
            raise ValueError(f"{where}: values has shape {tuple(values.shape)} but the pattern "
                             f"has {pattern.nnz} nonzeros")
    return pattern


def densify_state_dict(state_dict: Mapping[str, Any], dense_model: nn.Module) -> "OrderedDict[str, Any]":
    """A copy of ``state_dict`` in which every sparse layer's ``values`` / ``indptr`` /
    ``indices`` are replaced by its dense ``weight`` (zeros off the pattern).

    The state dict does not record dense shapes (a SparseLinear's is (out, in); a
    SparseConv2d's is (out, in/groups, kH, kW)), so they are taken from ``dense_model``'s
    module at the same name, which must have a ``weight``. Layers that are sparse in
    ``dense_model`` too are left in sparse form. Raises ValueError on a malformed entry.
    """
    out = OrderedDict(state_dict)
    metadata = getattr(state_dict, "_metadata", None)
    for prefix in sparse_prefixes(state_dict):
        name = prefix[:-1]
        try:
            target = dense_model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"the checkpoint has a sparse layer '{name}' that the dense model "
                             f"does not have") from None
        if isinstance(target, SparseWeightModule):
            continue
        weight = getattr(target, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"'{name}' in the dense model ({type(target).__name__}) has no "
                             f"weight tensor to take the sparse layer's values")
        where = (f"while densifying '{name or 'the model'}' (dense weight shape "
                 f"{tuple(weight.shape)})")
        if prefix + "values" not in state_dict:
            raise ValueError(f"{where}: the checkpoint has no '{prefix}values'")
        # GPT-2's Conv1D stores its weight (in, out): the pattern is of the transpose.
        transposed = is_conv1d(target)
        shape = tuple(weight.shape)[::-1] if transposed else tuple(weight.shape)
        pattern = _pattern_from(state_dict, prefix, shape, where)
        values = state_dict[prefix + "values"].detach().to("cpu", torch.float32)
        dense = pattern.to_dense(values).view(shape)
        dense = dense.t().contiguous() if transposed else dense
        for key in _SPARSE_KEYS:
            out.pop(prefix + key, None)
        out[prefix + "weight"] = dense
    if metadata is not None:
        out._metadata = metadata
    return out


def load_dense_state_dict(dense_model: nn.Module, sparse_state_dict: Mapping[str, Any],
                          strict: bool = True):
    """Load the state dict of a sparse model into ``dense_model`` (the same architecture with
    ``nn.Linear`` / ``nn.Conv2d`` where the sparse layers were): outputs are identical.
    Validated like :func:`safe_load_state_dict`. Returns ``load_state_dict``'s result."""
    return safe_load_state_dict(dense_model, densify_state_dict(sparse_state_dict, dense_model),
                                strict=strict)


def _hint(missing: List[str], unexpected: List[str]) -> str:
    sparse_extra = any(k.rpartition(".")[2] in _SPARSE_KEYS for k in unexpected)
    dense_missing = any(k.rpartition(".")[2] == "weight" for k in missing)
    if sparse_extra and dense_missing:
        return (" (the checkpoint has sparse layers where the model is dense: use "
                "sparseprop.load_dense_state_dict, or sparseprop.sparsify the model first)")
    if any(k.rpartition(".")[2] in _SPARSE_KEYS for k in missing) and \
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


def read_checkpoint(f) -> Mapping[str, Any]:
    """``torch.load(f, map_location="cpu", weights_only=True)`` with a clear error for a
    truncated or corrupted file (torch's own can be e.g. 'negative seek value')."""
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # zip / pickle / seek errors: all mean an unreadable file
        name = f if isinstance(f, (str, os.PathLike)) else type(f).__name__
        raise ValueError(f"cannot read checkpoint {name!s}: the file is truncated, corrupted "
                         f"or not a torch.save state dict ({type(err).__name__}: {err})") from err


def safe_load_state_dict(model: nn.Module, state_dict, strict: bool = True):
    """``model.load_state_dict(state_dict, strict)``, but all-or-nothing.

    ``state_dict`` may also be a path or file object, read with :func:`read_checkpoint`.

    ``load_state_dict`` copies module by module, so a bad entry in one layer used to leave
    the layers before it already overwritten. This checks the whole model first (see
    :func:`check_state_dict`) and only then loads. Returns ``load_state_dict``'s
    ``(missing_keys, unexpected_keys)``.
    """
    if isinstance(state_dict, (str, os.PathLike)) or hasattr(state_dict, "read"):
        state_dict = read_checkpoint(state_dict)
    check_state_dict(model, state_dict, strict)
    return nn.Module.load_state_dict(model, state_dict, strict=strict)


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
        if not isinstance(module, SparseWeightModule):
            continue
        prefix = name + "." if name else ""
        sparse_keys.update(prefix + k for k in _SPARSE_KEYS)
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

"""Hugging Face transformers: load a sparsified ``PreTrainedModel`` back in sparse form.

Saving needs nothing special: ``model.save_pretrained(path)`` of a sparsified model writes
each sparse layer's ``values`` / ``indptr`` / ``indices`` / ``bias`` into ``model.safetensors``
(8 bytes per nonzero instead of 4 per dense weight). Plain ``from_pretrained`` cannot read
them back (it builds dense layers and reports the sparse keys as unexpected), so::

    model = sparseprop.hf.from_pretrained(GPT2LMHeadModel, path)

lets transformers load everything dense as usual (config, embeddings, norms, tied weights),
then replaces every layer that the checkpoint stores in sparse form by its sparse twin
(SparseLinear, SparseConv1D for GPT-2's Conv1D, SparseConv2d) loaded from the file,
validated all-or-nothing. transformers and safetensors are imported only when called.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Dict, List

import torch
from torch import nn

from ._sparse_module import SparseWeightModule
from .module_tree import empty_sparse_twin, module_occurrences, replace_all, sparse_class

__all__ = ["from_pretrained", "sparse_layer_names"]

_PATTERN_KEYS = ("values", "indptr", "indices")


def _weight_files(path: str) -> List[str]:
    """The safetensors file(s) of a ``save_pretrained`` directory (sharded or not)."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(path, s) for s in shards]
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    raise FileNotFoundError(f"no model.safetensors (or its index) in {path!r}: "
                            f"sparseprop.hf.from_pretrained reads local save_pretrained output")


def _require(module: str):
    """Import an optional dependency, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"sparseprop.hf needs {module.split('.')[0]}: "
                          f"pip install transformers safetensors (or sparseprop[hf])") from e


def _read_tensors(files: List[str]) -> Dict[str, torch.Tensor]:
    load_file = _require("safetensors.torch").load_file

    tensors: Dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(f))
    return tensors


def sparse_layer_names(tensors) -> List[str]:
    """Qualified names of the layers stored in sparse form (all three pattern keys present)."""
    keys = set(tensors)
    prefixes = {k[: -len(".indptr")] for k in keys if k.endswith(".indptr")}
    return sorted(p for p in prefixes if all(f"{p}.{s}" in keys for s in _PATTERN_KEYS))


def _strip_base_prefix(model: nn.Module, name: str) -> str:
    """Map a checkpoint name onto ``model``: a base model saved alone has no
    ``base_model_prefix.`` while a head model loading it does (or the reverse)."""
    base = getattr(model, "base_model_prefix", "")
    names = dict(model.named_modules())
    if name in names:
        return name
    if base and f"{base}.{name}" in names:
        return f"{base}.{name}"
    if base and name.startswith(base + ".") and name[len(base) + 1:] in names:
        return name[len(base) + 1:]
    raise ValueError(f"the checkpoint has a sparse layer '{name}' that the model does not have")


def from_pretrained(cls, path: str, **kwargs):
    """``cls.from_pretrained(path, **kwargs)`` for a checkpoint with sparse layers.

    ``cls`` is a transformers model class (``GPT2LMHeadModel``, ``AutoModelForCausalLM``...),
    ``path`` a local directory written by ``save_pretrained``. Returns the model with each
    layer the checkpoint stores sparse replaced by its sparse twin holding the saved pattern
    and values (outputs identical to the saved model). Any other missing, unexpected or
    mismatched key is reported as transformers would (a warning), and a sparse layer whose
    dense counterpart in ``cls`` is not a Linear / Conv1D / Conv2d raises ``ValueError``.
    The model comes back in eval mode, like ``from_pretrained``'s; sparse layers store the
    dtype of the layer they replace (the model's ``dtype``).
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is not a directory (a save_pretrained output)")
    tensors = _read_tensors(_weight_files(path))
    sparse_names = sparse_layer_names(tensors)
    if kwargs.pop("output_loading_info", False):
        raise ValueError("output_loading_info is not supported; sparse keys are checked here")

    hf_logging = _require("transformers.utils.logging")

    # transformers would list every sparse key as unexpected and every sparse layer's weight
    # as newly initialized; we check those ourselves and re-report everything else.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(level)

    targets = {}
    for name in sparse_names:
        target = _strip_base_prefix(model, name)
        module = model.get_submodule(target)
        if isinstance(module, SparseWeightModule) or sparse_class(module) is None:
            raise ValueError(f"'{name}' is stored sparse but {cls.__name__} has a "
                             f"{type(module).__name__} there (expected Linear, Conv1D or Conv2d)")
        targets[name] = (target, module)

    _report_other_keys(info, sparse_names)

    occurrences = module_occurrences(model)
    for name, (target, module) in targets.items():
        has_bias = f"{name}.bias" in tensors
        with torch.inference_mode(False):
            sparse = empty_sparse_twin(module, has_bias)
        own = {k: tensors[f"{name}.{k}"] for k in _PATTERN_KEYS + (("bias",) if has_bias else ())}
        sparse.load_state_dict(own)  # validated, all-or-nothing
        sparse.train(module.training)
        replace_all(model, occurrences[id(module)][1], sparse)
    return model


def _report_other_keys(info: dict, sparse_names: List[str]) -> None:
    """Warn about loading problems other than the sparse layers' own keys."""
    ours = {f"{n}.{s}" for n in sparse_names for s in _PATTERN_KEYS}
    ours_weights = {f"{n}.weight" for n in sparse_names}

    def foreign(keys, expected):
        out = []
        for k in keys or ():
            k = k if isinstance(k, str) else k[0]  # mismatched keys are (key, shapes) tuples
            if not any(k == e or k.endswith("." + e) or e.endswith("." + k) for e in expected):
                out.append(k)
        return out

    unexpected = foreign(info.get("unexpected_keys"), ours)
    missing = foreign(info.get("missing_keys"), ours_weights)
    mismatched = foreign(info.get("mismatched_keys"), set())
    for label, keys in (("unexpected", unexpected), ("missing (newly initialized)", missing),
                        ("with mismatched shapes", mismatched)):
        if keys:
            warnings.warn(f"sparseprop.hf.from_pretrained: {label} keys: {sorted(keys)}",
                          stacklevel=3)

"""Model surgery: find layers in a model, decide which can run sparse, swap modules.

The one home of what :func:`sparseprop.sparsify`, :func:`sparseprop.densify`, the
pruners (``pruning/_layers.py``), ``sparseprop.hf`` and the benchmarks' ``sparsify_convs``
(``sparseprop.benchmarks.resnet_models``) share:

* :func:`module_occurrences`: every module with *all* the names it is reachable under
  (a module registered twice is swapped at both places);
* :func:`select_modules`: the one layer-name selector (a list of names, or a regular
  expression matched against whole names);
* :func:`sparse_class` / :func:`conversion_blocker`: the one convertibility rule;
* :func:`sparse_twin` / :func:`dense_twin`: a layer's other form, same outputs;
* :func:`replace_all`: the one swap.
"""
from __future__ import annotations

import copy
import re
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ._sparse_module import SparseWeightModule
from ._validation import STORAGE_DTYPES
from .hf_conv1d import SparseConv1D, conv1d_class, is_conv1d
from .modules import SparseConv2d, SparseLinear

__all__ = ["NamesArg", "Occurrences", "module_occurrences", "select_modules", "replace_all",
           "sparse_class", "dense_types", "conversion_blocker", "shared_parameter_users",
           "prune_reparametrized", "effective_tensor", "empty_sparse_twin", "sparse_twin",
           "dense_twin", "deepcopy_model"]

NamesArg = Union[None, str, "re.Pattern[str]", Iterable[str]]
Occurrences = Dict[int, Tuple[nn.Module, List[str]]]

DENSE_TO_SPARSE = ((nn.Linear, SparseLinear), (nn.Conv2d, SparseConv2d))


# ----------------------------------------------------------------------------------------
# finding and selecting
# ----------------------------------------------------------------------------------------
def module_occurrences(model: nn.Module) -> Occurrences:
    """id(module) -> (module, every qualified name it is reachable under), in model order."""
    found: Occurrences = {}
    for name, module in model.named_modules(remove_duplicate=False):
        found.setdefault(id(module), (module, []))[1].append(name)
    return found


def select_modules(names: NamesArg, occurrences: Occurrences, accept: Callable[[nn.Module], bool],
                   what: str, kinds: str) -> Optional[set]:
    """The ids of the modules ``names`` selects among ``occurrences`` (None: no filter).

    ``names`` is a regular expression (``str`` or compiled, matched with ``fullmatch``
    against every name of a module; only modules ``accept`` takes) or an iterable of
    qualified names (a trailing ``.weight`` is allowed); a name of no module, or of a
    module ``accept`` refuses, raises ValueError starting with ``what`` and, for the
    latter, saying the module is not ``kinds``."""
    if names is None:
        return None
    if isinstance(names, (str, re.Pattern)):
        regex = re.compile(names) if isinstance(names, str) else names
        return {key for key, (module, qnames) in occurrences.items()
                if accept(module) and any(regex.fullmatch(n) for n in qnames)}
    by_name = {n: key for key, (_, qnames) in occurrences.items() for n in qnames}
    chosen = set()
    for n in names:
        n = n[: -len(".weight")] if isinstance(n, str) and n.endswith(".weight") else n
        if n not in by_name:
            raise ValueError(f"{what}: no module named '{n}' in the model")
        module = occurrences[by_name[n]][0]
        if not accept(module):
            raise ValueError(f"{what}: '{n}' is a {type(module).__name__}, not {kinds}")
        chosen.add(by_name[n])
    return chosen


# ----------------------------------------------------------------------------------------
# the convertibility rule
# ----------------------------------------------------------------------------------------
def dense_types() -> Tuple[type, ...]:
    """nn.Linear, nn.Conv2d, and transformers' Conv1D when transformers is imported."""
    extra = conv1d_class()
    return (nn.Linear, nn.Conv2d) + ((extra,) if extra is not None else ())


def sparse_class(module: nn.Module) -> Optional[type]:
    """The sparse layer class for a dense ``module`` (None: it has none)."""
    if is_conv1d(module):
        return SparseConv1D
    for dense_cls, sparse_cls in DENSE_TO_SPARSE:
        if isinstance(module, dense_cls):
            return sparse_cls
    return None


def _dense_base(module: nn.Module) -> type:
    """The class whose ``forward`` the sparse twin reproduces."""
    if is_conv1d(module):
        return conv1d_class()
    return nn.Linear if isinstance(module, nn.Linear) else nn.Conv2d


def shared_parameter_users(model: nn.Module) -> Dict[int, int]:
    """id(parameter) -> how many modules of ``model`` hold it (tied weights: more than one)."""
    users: Dict[int, int] = {}
    for module in {id(m): m for m in model.modules()}.values():
        for p in module._parameters.values():
            if p is not None:
                users[id(p)] = users.get(id(p), 0) + 1
    return users


def conversion_blocker(module: nn.Module, weight: torch.Tensor,
                       users: Dict[int, int]) -> Optional[str]:
    """Why dense ``module`` cannot become its sparse twin, or None if it can.

    ``weight`` is the Parameter holding its weight (``weight_orig`` of a pruned layer) and
    ``users`` comes from :func:`shared_parameter_users`. The rule: a layer with a sparse
    class whose ``forward`` is the standard one (a subclass overriding it would be lost),
    with CPU weights of a storage dtype (float32, bfloat16, float16, float64), not shared
    with another module (swapping would untie it)."""
    if sparse_class(module) is None:
        return f"{type(module).__name__} has no sparse form"
    if type(module).forward is not _dense_base(module).forward:
        return f"{type(module).__name__} overrides forward"
    if weight.dtype not in STORAGE_DTYPES or weight.device.type != "cpu":
        return (f"{weight.dtype} weights on {weight.device} (sparse layers: CPU, "
                f"float32/bfloat16/float16/float64)")
    if users.get(id(weight), 0) > 1:
        return "weight shared with another module"
    return None


# ----------------------------------------------------------------------------------------
# the two forms of a layer
# ----------------------------------------------------------------------------------------
def prune_reparametrized(module: nn.Module, name: str) -> bool:
    """True if ``torch.nn.utils.prune`` reparametrized ``module.<name>``."""
    return name + "_orig" in module._parameters and name + "_mask" in module._buffers


def effective_tensor(module: nn.Module, name: str) -> Tuple[Optional[torch.Tensor],
                                                           Optional[torch.Tensor],
                                                           Optional[torch.Tensor]]:
    """(value, mask or None, the Parameter holding it) of ``module.<name>``.

    For a pruned tensor the value is recomputed as ``orig * mask`` (the attribute kept by
    the pruning hook is only refreshed at the next forward)."""
    if prune_reparametrized(module, name):
        orig = module._parameters[name + "_orig"]
        mask = module._buffers[name + "_mask"]
        return orig.detach() * mask, mask != 0, orig
    param = getattr(module, name, None)
    if param is None:
        return None, None, None
    return param.detach(), None, param


def empty_sparse_twin(module: nn.Module, has_bias: bool) -> SparseWeightModule:
    """A sparse layer with dense ``module``'s configuration and storage dtype, and an
    empty pattern."""
    dtype = effective_tensor(module, "weight")[2].dtype
    if is_conv1d(module):
        return SparseConv1D(module.nx, module.nf, bias=has_bias, sparsity=1.0, dtype=dtype)
    if isinstance(module, nn.Linear):
        return SparseLinear(module.in_features, module.out_features, bias=has_bias, sparsity=1.0,
                            dtype=dtype)
    return SparseConv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                        module.padding, module.dilation, module.groups, has_bias,
                        module.padding_mode, sparsity=1.0, dtype=dtype)


def _carry_training_state(old: nn.Module, new: nn.Module, old_weight: torch.Tensor,
                          new_weight: torch.Tensor) -> None:
    """The new form keeps train/eval mode and ``requires_grad`` of weight and bias."""
    new.train(old.training)
    new_weight.requires_grad_(old_weight.requires_grad)
    if getattr(old, "bias", None) is not None and getattr(new, "bias", None) is not None:
        new.bias.requires_grad_(old.bias.requires_grad)


def sparse_twin(dense: nn.Module, mask: Optional[torch.Tensor] = None,
                sparsity: Optional[float] = None) -> SparseWeightModule:
    """``from_dense`` of ``dense``'s sparse class, keeping train/eval mode and
    ``requires_grad``; ``mask`` / ``sparsity`` as for ``from_dense``."""
    cls = sparse_class(dense)
    if cls is None:
        raise TypeError(f"{type(dense).__name__} has no sparse form "
                        f"(nn.Linear, nn.Conv2d, transformers Conv1D)")
    sparse = cls.from_dense(dense, mask=mask, sparsity=sparsity)
    _carry_training_state(dense, sparse, dense.weight, sparse.values)
    return sparse


def dense_twin(sparse: SparseWeightModule) -> nn.Module:
    """``sparse.to_dense()`` (identical outputs), keeping train/eval mode and
    ``requires_grad``; never made of inference tensors."""
    with torch.inference_mode(False):
        dense = sparse.to_dense()
    _carry_training_state(sparse, dense, sparse.values, dense.weight)
    return dense


# ----------------------------------------------------------------------------------------
# swapping and copying
# ----------------------------------------------------------------------------------------
def replace_all(model: nn.Module, names: Sequence[str], new: nn.Module) -> nn.Module:
    """Put ``new`` at every name in ``names``; returns the (possibly new) root (the name
    ``""`` is the model itself)."""
    root = model
    for name in names:
        if not name:
            root = new
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return root


def deepcopy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on models pruned with torch.nn.utils.prune.

    After a forward with gradients, a pruned module's ``weight`` attribute is the
    non-leaf ``weight_orig * weight_mask``, which tensors refuse to deepcopy; the copy
    gets a detached one instead (the pruning hook recomputes it at the next forward)."""
    swapped = []
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and not value.is_leaf and \
                    prune_reparametrized(module, name):
                swapped.append((module, name, value))
                setattr(module, name, value.detach())
    try:
        # Under torch.inference_mode() a deepcopy would be made of inference tensors,
        # unusable for training (and for sparse layers' pattern checks).
        with torch.inference_mode(False):
            return copy.deepcopy(model)
    finally:
        for module, name, value in swapped:
            setattr(module, name, value)

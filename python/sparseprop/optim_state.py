"""Pattern changes during training (prune / regrow), with optimizer state carried over.

A sparse layer's trainable weights are one 1-D ``values`` Parameter, one entry per
nonzero of its pattern. When the pattern changes, the entries of every per-parameter
optimizer state tensor (SGD ``momentum_buffer``; Adam/AdamW ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``; Adagrad ``sum``; RMSprop ``square_avg``, ``momentum_buffer``,
``grad_avg``; ...) must move with their (row, column) position:

* an entry present in both patterns keeps its value, gradient and optimizer state;
* a new entry starts with zero state (and a zero value unless one is given);
* a removed entry's value and state are dropped.

Scalar state (``step``) is left as is. The ``values`` Parameter object is kept (only its
``.data`` changes), so the optimizer goes on training the layer.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from .csr import CSRPattern

__all__ = ["update_pattern", "apply_masks", "remap_optimizer_state", "entry_map",
           "swap_parameter", "state_tensors"]

Number = Union[int, float]


def _is_sparse_layer(module: nn.Module) -> bool:
    """The protocol this module needs of a sparse layer (``SparseWeightModule``: a
    ``values`` Parameter, ``pattern`` / ``pattern_shape``, ``set_pattern``). Tested by
    attribute so that this module sits below the layers (they call it from set_pattern)."""
    return (isinstance(module, nn.Module) and isinstance(getattr(module, "values", None), nn.Parameter)
            and callable(getattr(module, "set_pattern", None)) and hasattr(module, "pattern_shape"))


def _flat_positions(pattern: CSRPattern) -> torch.Tensor:
    """row * cols + col of each nonzero, in storage order (strictly increasing)."""
    return pattern.row_indices() * pattern.cols + pattern.indices.long()


def entry_map(old: CSRPattern, new: CSRPattern) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(kept, source)`` for the nonzeros of ``new``: ``kept[i]`` tells whether new entry i
    exists in ``old``, and then ``source[i]`` is its index among ``old``'s nonzeros."""
    if old.shape != new.shape:
        raise ValueError(f"patterns have different shapes: {old.shape} and {new.shape}")
    old_flat, new_flat = _flat_positions(old), _flat_positions(new)
    if old_flat.numel() == 0:
        return torch.zeros(new.nnz, dtype=torch.bool), torch.zeros(new.nnz, dtype=torch.long)
    source = torch.searchsorted(old_flat, new_flat).clamp_(max=old_flat.numel() - 1)
    kept = old_flat[source] == new_flat
    return kept, source


def _remap(t: torch.Tensor, kept: torch.Tensor, source: torch.Tensor,
           fill: Optional[torch.Tensor] = None) -> torch.Tensor:
    out = torch.zeros(kept.numel(), dtype=t.dtype, device=t.device) if fill is None else \
        fill.to(t.dtype).clone()
    out[kept] = t[source[kept]]
    return out


def _holds(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> bool:
    return any(p is param for group in optimizer.param_groups for p in group["params"])


def check_optimizer(optimizer: torch.optim.Optimizer, param: torch.Tensor, what: str = "") -> None:
    """Raise ValueError unless ``optimizer`` trains ``param``."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not _holds(optimizer, param):
        raise ValueError(f"the optimizer does not train {what or 'this layer'}'s values "
                         f"parameter, so its state cannot be remapped")


def remap_optimizer_state(optimizer: torch.optim.Optimizer, param: torch.Tensor,
                          old: CSRPattern, new: CSRPattern) -> None:
    """Move ``optimizer``'s per-entry state of ``param`` from pattern ``old`` to ``new``.

    Every state tensor of shape ``(old.nnz,)`` is remapped (surviving positions keep their
    state, new ones start at zero); anything else (``step``, ...) is left alone.
    """
    state = optimizer.state.get(param)
    if not state:
        return
    kept, source = entry_map(old, new)
    for key, value in list(state.items()):
        if isinstance(value, torch.Tensor) and value.dim() == 1 and value.shape[0] == old.nnz \
                and key != "step":
            state[key] = _remap(value, kept, source)


def _as_pattern(module, pattern_or_mask) -> CSRPattern:
    if isinstance(pattern_or_mask, CSRPattern):
        return pattern_or_mask
    if not isinstance(pattern_or_mask, torch.Tensor):
        raise TypeError(f"expected a CSRPattern or a mask tensor, got {type(pattern_or_mask).__name__}")
    mask = pattern_or_mask
    if tuple(mask.shape) not in (tuple(module.weight_shape), tuple(module.pattern_shape)):
        raise ValueError(f"mask has shape {tuple(mask.shape)} but the layer's weight is "
                         f"{tuple(module.weight_shape)}")
    return CSRPattern.from_mask(mask.detach().reshape(module.pattern_shape))


def _new_entry_values(module, pattern: CSRPattern, values) -> Optional[torch.Tensor]:
    """Candidate values for every entry of ``pattern`` (only new entries use them)."""
    if values is None:
        return None
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return torch.full((pattern.nnz,), float(values))
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a number or a tensor, got {type(values).__name__}")
    values = values.detach().to("cpu", torch.float32)
    if values.dim() == 0:
        return values.expand(pattern.nnz).clone()
    if tuple(values.shape) in (tuple(module.weight_shape), tuple(module.pattern_shape)):
        return pattern.gather(values.reshape(module.pattern_shape))
    if tuple(values.shape) == (pattern.nnz,):
        return values
    raise ValueError(f"values must be a number, a dense tensor of shape "
                     f"{tuple(module.weight_shape)} or a ({pattern.nnz},) tensor aligned with "
                     f"the new pattern, got shape {tuple(values.shape)}")


def update_pattern(module: nn.Module, pattern_or_mask: Union[CSRPattern, torch.Tensor],
                   optimizer: Optional[torch.optim.Optimizer] = None,
                   values: Union[None, Number, torch.Tensor] = None) -> Dict[str, int]:
    """Change a sparse layer's pattern, keeping what survives.

    Args:
        module: a ``SparseLinear`` / ``SparseConv2d``.
        pattern_or_mask: the new pattern: a :class:`CSRPattern` of the layer's
            ``pattern_shape``, or a mask (nonzero = kept) shaped like the dense weight.
        optimizer: if given, its state for ``module.values`` is remapped (see module doc).
        values: initial values of the *new* entries (default 0): a number, a dense tensor
            shaped like the weight, or a ``(new nnz,)`` tensor aligned with the new pattern
            (its entries at surviving positions are ignored).

    Surviving entries keep their value, gradient (if any) and optimizer state. The
    ``values`` Parameter object is kept. Returns ``{"kept", "removed", "added"}`` counts.
    Nothing is changed if an argument is invalid.
    """
    if not _is_sparse_layer(module):
        raise TypeError(f"update_pattern expects a sparse layer, got {type(module).__name__}")
    new = _as_pattern(module, pattern_or_mask)
    if new.shape != module.pattern_shape:
        raise ValueError(f"pattern shape {new.shape} does not match the layer's "
                         f"{module.pattern_shape}")
    fill = _new_entry_values(module, new, values)
    if optimizer is not None:
        check_optimizer(optimizer, module.values)
    old = module.pattern
    kept, source = entry_map(old, new)
    param = module.values
    with torch.no_grad():
        new_values = _remap(param.detach(), kept, source, fill)
    grad = param.grad
    new_grad = _remap(grad, kept, source) if grad is not None and grad.shape == (old.nnz,) else None
    module.set_pattern(new, new_values, optimizer=optimizer)
    param.grad = new_grad
    n_kept = int(kept.sum())
    return {"kept": n_kept, "removed": old.nnz - n_kept, "added": new.nnz - n_kept}


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor],
                optimizer: Optional[torch.optim.Optimizer] = None,
                values: Union[None, Number, Mapping[str, torch.Tensor]] = None) -> Dict[str, Dict[str, int]]:
    """:func:`update_pattern` for several layers of ``model`` at once.

    ``masks`` maps a sparse layer's qualified name (``"0"``, ``"encoder.fc1"``; a trailing
    ``".weight"`` is accepted too) to a mask shaped like its dense weight. ``values`` is a
    number or a dict name -> tensor for the new entries (default 0). Every name, mask and
    the optimizer are checked before any layer changes. Returns ``{name: counts}``.
    """
    plan = []
    for name, mask in masks.items():
        module_name = name
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        if module is None and (name.endswith(".weight") or name == "weight"):
            module_name = name[: -len("weight")].rstrip(".")
            try:
                module = model.get_submodule(module_name)
            except AttributeError:
                module = None
        if module is None:
            raise ValueError(f"apply_masks: no module named '{name}' in the model")
        if not _is_sparse_layer(module):
            raise TypeError(f"apply_masks: '{name}' is a {type(module).__name__}, not a sparse "
                            f"layer (convert it with sparseprop.sparsify first)")
        new = _as_pattern(module, mask)
        v = values.get(name) if isinstance(values, Mapping) else values
        _new_entry_values(module, new, v)  # validate now
        if optimizer is not None:
            check_optimizer(optimizer, module.values, f"'{name}'")
        plan.append((name, module, new, v))
    return {name: update_pattern(module, new, optimizer, v) for name, module, new, v in plan}


# ----------------------------------------------------------------------------------------
# a parameter replaced by another one (a layer changing form: dense <-> sparse)
# ----------------------------------------------------------------------------------------
def state_tensors(optimizer: Optional[torch.optim.Optimizer], param: torch.Tensor,
                  shape) -> List[torch.Tensor]:
    """``optimizer``'s per-entry state tensors of ``param`` that have ``shape`` (no ``step``)."""
    if optimizer is None:
        return []
    state = optimizer.state.get(param, {})
    return [v for k, v in state.items()
            if k != "step" and isinstance(v, torch.Tensor) and v.shape == shape]


def swap_parameter(optimizer: Optional[torch.optim.Optimizer], old: torch.Tensor, new: torch.Tensor,
                   convert: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Make ``optimizer`` train ``new`` in place of ``old``, converting ``old``'s state
    tensors (those shaped like ``old``) with ``convert``; scalar state (step) is kept.
    ValueError if the optimizer does not hold a trainable ``old``."""
    if optimizer is None:
        return
    found = False
    for group in optimizer.param_groups:
        params = group["params"]
        for i, p in enumerate(params):
            if p is old:
                params[i], found = new, True
    if not found and old.requires_grad:
        raise ValueError("the optimizer does not train this layer's weight; pass the optimizer "
                         "that trains the model (or None)")
    state = optimizer.state.pop(old, None)
    if state:
        optimizer.state[new] = {k: (convert(v) if isinstance(v, torch.Tensor) and k != "step"
                                    and v.shape == old.shape else v)
                                for k, v in state.items()}

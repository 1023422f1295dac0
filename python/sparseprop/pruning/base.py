"""The pruner driver every algorithm shares: the layers, the clock, the masks, the log,
and a state_dict from which an interrupted run resumes exactly.

Usage::

    pruner = GradualMagnitudePruner(model, optimizer, sparsity=0.95, end_step=1000)
    for x, y in batches:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        pruner.step()           # after the optimizer step

To resume: rebuild model, optimizer and pruner as at the start, then
``pruner.load_state_dict(ckpt["pruner"])`` *first* (it puts every layer back in the
form and mask it had), then ``model.load_state_dict(...)`` and
``optimizer.load_state_dict(...)``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .._workspace import trim_heap
from ..csr import check_sparsity
from ._layers import Layer, NamesArg, find_layers

__all__ = ["Pruner"]


class Pruner:
    """Base class: subclasses implement :meth:`_update` (what to do at tick ``t``).

    Args:
        model: any module with ``nn.Linear`` / ``nn.Conv2d`` (or sparse) layers.
        optimizer: the optimizer training ``model``; its state follows every mask or
            form change. ``None`` is allowed when nothing trains the model.
        layers / exclude: which layers to prune: ``None`` (all), a list of module names,
            or a regular expression matched against the whole name.
        sparse_from: a layer at least this sparse runs on the sparse kernels (its module
            is swapped for ``SparseLinear`` / ``SparseConv2d``), below it as a masked
            dense layer. ``"auto"`` (default): each layer's own switch point, where its
            sparse step costs what its dense step does for its shape and batch on this
            machine (measured once and cached, see :mod:`.switch_point`; 0.7 before the
            layer has seen an input). ``None`` keeps every layer dense (masks only).
        unit: ``"step"``: :meth:`step` advances the schedule (times are optimizer steps);
            ``"epoch"``: :meth:`epoch_step` does (times are epochs) and :meth:`step` only
            enforces the masks.
        seed: seeds the pruner's random choices (random scores, ...).
    """

    needs_gradients = False  # True for algorithms that score with dense gradients

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, *,
                 layers: NamesArg = None, exclude: NamesArg = None,
                 sparse_from: Union[None, float, str] = "auto", unit: str = "step",
                 seed: int = 0) -> None:
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, "
                            f"got {type(optimizer).__name__}")
        if unit not in ("step", "epoch"):
            raise ValueError(f"unit must be 'step' or 'epoch', got {unit!r}")
        self.model, self.optimizer, self.unit = model, optimizer, unit
        self.sparse_from = _check_sparse_from(sparse_from)
        self.layers: Dict[str, Layer] = find_layers(model, layers, exclude)
        self.t = 0
        self.history: List[Dict[str, Any]] = []
        self.generator = torch.Generator().manual_seed(seed)

    def _start(self) -> None:
        """Subclasses call this at the end of ``__init__``: tick 0 happens now."""
        for layer in self.layers.values():
            layer.attach()
        self._tick(0)

    # --- the clock ----------------------------------------------------------------------
    def step(self) -> bool:
        """Call once after every ``optimizer.step()``. Returns True if masks changed."""
        for layer in self.layers.values():
            layer.enforce()
        if self.unit == "step":
            self.t += 1
            return self._tick(self.t)
        return False

    def epoch_step(self) -> bool:
        """Call once at the end of every epoch (advances ``unit="epoch"`` pruners)."""
        if self.unit == "epoch":
            self.t += 1
            return self._tick(self.t)
        return False

    def _tick(self, t: int) -> bool:
        grads = None
        if any(layer.capturing for layer in self.layers.values()):
            grads = {name: layer.stop_capture() for name, layer in self.layers.items()}
        for layer in self.layers.values():  # scoring passes are not training batches
            layer.watching = False
        try:
            changed = self._update(t, grads)
        finally:
            for layer in self.layers.values():
                layer.watching = True
        if self.needs_gradients and self._wants_gradients(t + 1):
            for layer in self.layers.values():
                layer.start_capture()
        return changed

    def _update(self, t: int, grads: Optional[Dict[str, torch.Tensor]]) -> bool:
        raise NotImplementedError

    def _wants_gradients(self, t: int) -> bool:
        """Whether the update at tick ``t`` scores with dense gradients (captured over
        the backward passes of the tick before it)."""
        return False

    # --- masks --------------------------------------------------------------------------
    def masks(self) -> Dict[str, torch.Tensor]:
        """The current boolean mask of every layer (dense weight shape)."""
        return {name: layer.mask() for name, layer in self.layers.items()}

    def weights(self) -> Dict[str, torch.Tensor]:
        return {name: layer.weight() for name, layer in self.layers.items()}

    def apply_masks(self, masks: Dict[str, torch.Tensor]) -> None:
        """Put ``masks`` on their layers (kept weights keep their value, optimizer state
        and gradient; newly kept ones start at zero) and log the sparsity."""
        for name, mask in masks.items():
            layer = self.layers[name]
            if tuple(mask.shape) != tuple(layer.shape):
                raise ValueError(f"mask for '{name}' has shape {tuple(mask.shape)}, the layer's "
                                 f"weight is {tuple(layer.shape)}")
        for name, mask in masks.items():
            self.layers[name].set_mask(self.model, mask, self.optimizer, self.sparse_from)
        self._log()
        trim_heap()  # the update's full-size temporaries go back to the OS, not into the heap

    def _log(self) -> None:
        counts = self._counts()  # counting a dense mask is a full pass: once per entry
        self.history.append({"step": self.t, "sparsity": _overall(counts),
                             "layers": _per_layer(counts)})

    def _counts(self) -> Dict[str, Tuple[int, int]]:
        """(kept, total) weights of every layer."""
        return {name: (layer.nnz(), layer.numel) for name, layer in self.layers.items()}

    def sparsity(self) -> float:
        """Fraction of the pruned layers' weights that are pruned."""
        return _overall(self._counts())

    def layer_sparsity(self) -> Dict[str, float]:
        return _per_layer(self._counts())

    def kernels(self) -> Dict[str, tuple]:
        return {name: layer.kernel for name, layer in self.layers.items()}

    def remove(self) -> None:
        """Stop pruning: remove the gradient hooks (the current masks stay in the weights)."""
        for layer in self.layers.values():
            layer.stop_capture()
            layer.remove_hooks()

    # --- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume: the clock, the log, each layer's form and mask,
        the random generator and the algorithm's own state."""
        layers = {}
        for name, layer in self.layers.items():
            mask = layer.mask()
            layers[name] = {"sparse": not layer.is_dense, "mask": mask}
        return {"t": self.t, "history": [dict(h) for h in self.history], "layers": layers,
                "generator": self.generator.get_state(), "algorithm": self._extra_state()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`: layers take their saved form and mask (load the
        model's and optimizer's state dicts *after* this)."""
        try:
            layers, t = state["layers"], int(state["t"])
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a pruner state_dict (missing {err})") from None
        if set(layers) != set(self.layers):
            raise ValueError(f"the saved pruner has layers {sorted(layers)}, this one "
                             f"{sorted(self.layers)}")
        for name, saved in layers.items():
            if tuple(saved["mask"].shape) != tuple(self.layers[name].shape):
                raise ValueError(f"saved mask of '{name}' has shape {tuple(saved['mask'].shape)}, "
                                 f"the layer's weight is {tuple(self.layers[name].shape)}")
        for layer in self.layers.values():
            layer.stop_capture()
        for name, saved in layers.items():
            # Force the saved form whatever sparse_from says now.
            form = 0.0 if saved["sparse"] else None
            self.layers[name].set_mask(self.model, saved["mask"], self.optimizer, form)
        self.t = t
        self.history = [dict(h) for h in state.get("history", [])]
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self._load_extra_state(state.get("algorithm", {}))
        if self.needs_gradients and self._wants_gradients(t + 1):
            for layer in self.layers.values():
                layer.start_capture()

    def _extra_state(self) -> Dict[str, Any]:
        return {}

    def _load_extra_state(self, state: Dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(layers={len(self.layers)}, t={self.t}, "
                f"sparsity={self.sparsity():.4f})")


def _check_sparse_from(sparse_from):
    if sparse_from is None:
        return None
    if isinstance(sparse_from, str):
        if sparse_from != "auto":
            raise ValueError(f"sparse_from must be a number in [0, 1], None or 'auto', "
                             f"got {sparse_from!r}")
        return sparse_from
    return check_sparsity(sparse_from, "sparse_from")


def _pruned_fraction(kept: int, total: int) -> float:
    return 1.0 - kept / total if total else 0.0


def _overall(counts: Dict[str, Tuple[int, int]]) -> float:
    return _pruned_fraction(sum(k for k, _ in counts.values()), sum(t for _, t in counts.values()))


def _per_layer(counts: Dict[str, Tuple[int, int]]) -> Dict[str, float]:
    return {name: _pruned_fraction(k, t) for name, (k, t) in counts.items()}

"""The pruner driver every algorithm shares: the layers, the clock, the masks, the log,
and a state_dict from which an interrupted run resumes exactly.

Usage::

    pruner = GradualMagnitudePruner(model, optimizer, sparsity=0.95, end_step=1000)
    for x, y in batches:
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        pruner.step()           # after the optimizer step

Every named algorithm is a preset of a score (:mod:`.scores`), a layer allocation
(:mod:`.allocation`) and a schedule (:mod:`.schedules`); ``score=``, ``allocation=`` and
``schedule=`` replace any of its three, and ``Pruner`` itself takes all three::

    pruner = Pruner(model, optimizer, sparsity=0.8, score=LAMPScore(),
                    allocation=GlobalAllocation(), schedule=ACDCSchedule(1000, 100, 200, 100, 200))

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
from ..csr import check_sparsity, nnz_for, topk_mask
from ._layers import Layer, NamesArg, find_layers
from .allocation import Allocation, UniformAllocation, as_allocation, check_target
from .regrowth import drop_and_grow, require_grads
from .schedules import Schedule
from .scores import MagnitudeScore, RandomScore, Score, as_score

__all__ = ["Pruner"]


class Pruner:
    """The driver of every pruning algorithm: a :class:`~.scores.Score`, an
    :class:`~.allocation.Allocation` and a :class:`~.schedules.Schedule` on the model's
    layers.

    At each tick the schedule says what happens: prune to a sparsity (the score ranks
    the weights kept so far, the allocation says how many each layer keeps), lift every
    mask, and/or drop a fraction of each layer's kept weights by magnitude and regrow as
    many by dense gradient (RigL's drop-and-grow). The named algorithms
    (:class:`GradualMagnitudePruner`, :class:`RigLPruner`, ...) are presets of the three;
    ``Pruner(model, optimizer, sparsity=..., score=..., allocation=..., schedule=...)``
    builds any other combination. (A subclass may instead implement :meth:`_update`
    itself and call :meth:`_start` at the end of its ``__init__``.)

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
        sparsity: the target sparsity (a schedule with its own ``final_sparsity`` gives
            it when omitted).
        score / allocation / schedule: the three parts (a :class:`~.scores.Score` or
            ``"magnitude"`` / ``"lamp"``; an :class:`~.allocation.Allocation` or one of
            ``"uniform"``, ``"global"``, ``"er"``, ``"erk"``; a
            :class:`~.schedules.Schedule`). Give all three, or none in a subclass.
    """

    needs_gradients = False  # True for algorithms that score with dense gradients
    _skips_unchanged = False  # prune_to skips a target that keeps every kept weight (logs only)

    def __init__(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None, *,
                 layers: NamesArg = None, exclude: NamesArg = None,
                 sparse_from: Union[None, float, str] = "auto", unit: str = "step",
                 seed: int = 0, sparsity: Optional[float] = None, score=None, allocation=None,
                 schedule: Optional[Schedule] = None) -> None:
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
        self.target: Optional[float] = None
        self.score: Optional[Score] = None
        self.allocation: Optional[Allocation] = None
        self.schedule: Optional[Schedule] = None
        parts = (score, allocation, schedule)
        if any(p is not None for p in parts + (sparsity,)):
            if any(p is None for p in parts):
                raise TypeError(f"{type(self).__name__} needs score=, allocation= and schedule= "
                                f"together (or use a named algorithm such as "
                                f"GradualMagnitudePruner)")
            self._compose(sparsity, as_score(score), as_allocation(allocation), schedule)
            if type(self) is Pruner:  # a subclass calls _start at the end of its own __init__
                self._start()

    def _compose(self, sparsity: Optional[float], score: Score, allocation: Allocation,
                 schedule: Schedule) -> None:
        """Set the three parts and the target, refusing combinations that cannot run."""
        name = type(self).__name__
        if not isinstance(score, Score):
            raise TypeError(f"score must be a Score, got {type(score).__name__}")
        if not isinstance(allocation, Allocation):
            raise TypeError(f"allocation must be an Allocation, got {type(allocation).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule (GradualSchedule, ACDCSchedule, ...), "
                            f"got {type(schedule).__name__}")
        own = getattr(schedule, "final_sparsity", None)
        target = check_target(own if sparsity is None else sparsity)
        if own is not None and own != target:
            raise ValueError(f"{name}: sparsity={target} but the schedule's final_sparsity is {own}")
        if isinstance(score, RandomScore) and not allocation.per_layer:
            raise ValueError("random scores need a per-layer allocation: 'erk', 'er' or 'uniform'")
        if score.needs_gradients and schedule.target(0, target) is not None:
            raise TypeError(f"{type(score).__name__} scores with the dense gradient of the step "
                            f"before an update, but {name}'s schedule prunes at tick 0 (when the "
                            f"pruner is created), before any backward pass: use a schedule that "
                            f"prunes later, or another score")
        gradients = score.needs_gradients or schedule.regrows
        if gradients and self.unit != "step":
            raise ValueError(f"{name} with {type(score).__name__} and {type(schedule).__name__} "
                             f"uses one step's gradient: unit must be 'step'")
        self.target, self.score, self.allocation, self.schedule = target, score, allocation, schedule
        self.needs_gradients = gradients

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

    @property
    def _label(self) -> str:
        """The algorithm's name in error messages."""
        return type(self).__name__

    def _update(self, t: int, grads: Optional[Dict[str, torch.Tensor]]) -> bool:
        """What the schedule says for tick ``t``; True if masks changed."""
        schedule = self.schedule
        if schedule is None:
            raise NotImplementedError(f"{type(self).__name__} has no schedule: give score=, "
                                      f"allocation= and schedule=, or implement _update")
        if schedule.releases(t):
            self.apply_masks({n: torch.ones(layer.shape, dtype=torch.bool)
                              for n, layer in self.layers.items()})
            return True
        target = schedule.target(t, self.target)
        fraction = schedule.regrow_fraction(t)
        if target is None and not fraction:
            return False
        if fraction or self.score.needs_gradients:
            grads = require_grads(grads, self._label)
        if not fraction:
            self.prune_to(target, grads)
            return True
        # Pruning and regrowth end in one mask change: a weight pruned and regrown in the
        # same update keeps its value (as RigL's reference implementation does).
        masks = self.masks() if target is None else self._select(target, grads)
        weights = self.weights()
        for name in masks:
            count = int(fraction * int(torch.count_nonzero(masks[name])))
            masks[name] = drop_and_grow(weights[name], masks[name], grads[name], count)
        self.apply_masks(masks)
        return True

    def prune_to(self, sparsity: float, grads: Optional[Dict[str, torch.Tensor]] = None) -> None:
        """Keep the top-scoring weights (among those kept so far, unless the schedule
        chooses from all weights) at ``sparsity``, split by the allocation."""
        if self.score is None:
            raise NotImplementedError(f"{type(self).__name__} has no score and allocation")
        restricted = not self.schedule.from_all_weights
        if restricted and self._skips_unchanged and self._unchanged(sparsity):
            self._log()  # every layer already keeps what the target keeps: no ranking
            return
        # Exact types: a subclass may score or allocate otherwise.
        if restricted and type(self.score) is MagnitudeScore \
                and type(self.allocation) is UniformAllocation:
            # Sparse layers prune inside their form (never below sparse_from again: pruning
            # only raises sparsity); only dense layers need dense scores and masks.
            masks = {}
            for name, layer in self.layers.items():
                k = nnz_for(sparsity, layer.numel)
                if not layer.is_dense:
                    layer.keep_top_values(k, self.optimizer)
                else:  # rank |w| among the weights still kept
                    score = layer.module.weight.detach().abs()
                    masks[name] = topk_mask(score, k, layer.dense_mask)
            self.apply_masks(masks)
            return
        self.apply_masks(self._select(sparsity, grads))

    def _select(self, sparsity: float, grads: Optional[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """The masks at ``sparsity`` by the score and the allocation (nothing applied)."""
        masks = self.masks()
        scores = self.score.scores(self, masks, grads)
        allowed = None if self.schedule.from_all_weights else masks
        return self.allocation.masks(scores, sparsity, allowed, self.kernels())

    def _unchanged(self, sparsity: float) -> bool:
        """True when pruning to ``sparsity`` keeps every weight kept now (only weights kept
        so far can be kept, so equal counts mean equal masks): tick 0 at sparsity 0, or a
        schedule step that does not move the target."""
        name = self.allocation.name
        if name not in ("uniform", "global") or self.allocation.min_keep:
            return False
        counts = self._counts()
        if name == "uniform":
            return all(kept == nnz_for(sparsity, total) for kept, total in counts.values())
        return sum(k for k, _ in counts.values()) == nnz_for(sparsity, sum(t for _, t in counts.values()))

    def _wants_gradients(self, t: int) -> bool:
        """Whether the update at tick ``t`` scores with dense gradients (captured over
        the backward passes of the tick before it)."""
        schedule = self.schedule
        if schedule is None:
            return False
        if schedule.regrow_fraction(t) > 0:
            return True
        return self.score.needs_gradients and schedule.target(t, self.target) is not None

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

"""Magnitude pruning: one-shot, gradual (Zhu & Gupta) and iterative with rewinding."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from .._validation import check_count as _check_count, renamed_keyword
from ..csr import nnz_for, topk_mask
from .allocation import allocate, check_allocation, check_target
from .base import Pruner
from .schedules import GradualSchedule, IterativeSchedule
from .scores import lamp, magnitude

__all__ = ["MagnitudePruner", "GradualMagnitudePruner", "IterativeMagnitudePruner"]

_SCORES = {"magnitude": magnitude, "lamp": lamp}
_SCOPES = ("layerwise", "global")


def _score_fn(score: str):
    if score not in _SCORES:
        raise ValueError(f"score must be one of {tuple(_SCORES)}, got {score!r}")
    return _SCORES[score]


def _check_min_keep(min_keep: float, allocation: str) -> float:
    value = float(min_keep)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"min_keep must be in [0, 1], got {min_keep!r}")
    if value and allocation != "global":
        raise ValueError("min_keep applies to the 'global' allocation only")
    return value


class MagnitudePruner(Pruner):
    """One-shot pruning of the lowest-scoring weights at tick ``at`` (default: now).

    ``allocation``: ``"uniform"`` (every layer at ``sparsity``), ``"global"`` (one
    threshold over all layers; with ``min_keep=m`` each layer first keeps its top
    ``ceil(m * n)`` weights, which prevents layer collapse: Gupta et al. 2024), ``"er"`` or
    ``"erk"`` (per-layer densities from the shapes). ``score="lamp"`` with the global
    allocation is LAMP (Lee et al., ICLR 2021). Only weights kept so far can be kept.
    """

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: float,
                 allocation: str = "uniform", min_keep: float = 0.0, score: str = "magnitude",
                 at: int = 0, **kwargs) -> None:
        super().__init__(model, optimizer, **kwargs)
        self.target = check_target(sparsity)
        self.allocation, self.score = allocation, score
        self.score_fn = _score_fn(score)
        self.min_keep = _check_min_keep(min_keep, allocation)
        self.at = _check_count("at", at)
        check_allocation(allocation)
        self._start()

    def _update(self, t, grads) -> bool:
        if t != self.at:
            return False
        self.prune_to(self.target)
        return True

    def prune_to(self, sparsity: float) -> None:
        """Keep the top-scoring weights (among those kept so far) at ``sparsity``."""
        if self._unchanged(sparsity):
            self._log()  # every layer already keeps what the target keeps: no ranking
            return
        layers = self.layers
        if self.allocation == "uniform" and self.score == "magnitude":
            # Sparse layers prune inside their form (never below sparse_from again: pruning
            # only raises sparsity); only dense layers need dense scores and masks.
            masks = {}
            for name, layer in layers.items():
                k = nnz_for(sparsity, layer.numel)
                if not layer.is_dense:
                    layer.keep_top_values(k, self.optimizer)
                else:  # |w| is a fresh tensor: rank inside it (pruned weights are excluded)
                    score = layer.module.weight.detach().abs()
                    masks[name] = topk_mask(score, k, layer.dense_mask, overwrite=True)
            self.apply_masks(masks)
            return
        weights = {n: layer.weight() for n, layer in layers.items()}
        scores = {n: self.score_fn(w) for n, w in weights.items()}
        allowed = {n: layer.mask() for n, layer in layers.items()}
        kernels = {n: layer.kernel for n, layer in layers.items()}
        masks = allocate(scores, sparsity, self.allocation, allowed, self.min_keep, kernels) \
            if layers else {}
        self.apply_masks(masks)

    def _unchanged(self, sparsity: float) -> bool:
        """True when pruning to ``sparsity`` keeps every weight kept now (only weights kept
        so far can be kept, so equal counts mean equal masks): tick 0 at sparsity 0, or a
        schedule step that does not move the target."""
        if self.allocation not in ("uniform", "global") or self.min_keep:
            return False
        counts = self._counts()
        if self.allocation == "uniform":
            return all(kept == nnz_for(sparsity, total) for kept, total in counts.values())
        return sum(k for k, _ in counts.values()) == nnz_for(sparsity, sum(t for _, t in counts.values()))


class GradualMagnitudePruner(MagnitudePruner):
    """Gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune: exploring the
    efficacy of pruning for model compression", 2017).

    Every ``frequency`` ticks from ``start_step`` to ``end_step`` the sparsity is raised to
    ``s_t = s_f + (s_i - s_f) * (1 - (t - start_step) / (end_step - start_step))**3`` by
    removing the smallest-magnitude weights still kept. ``scope="layerwise"`` gives every
    layer ``s_t``; ``"global"`` uses one threshold (``min_keep`` as in
    :class:`MagnitudePruner`). With ``leave_enabled=False`` the masks are lifted after
    ``end_step`` (pruned weights may grow back from zero). ``sparsity`` is the target
    ``s_f``, ``initial_sparsity`` is ``s_i``; ``final_sparsity=`` is ``sparsity``'s
    deprecated old name (DeprecationWarning).
    """

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: Optional[float] = None,
                 end_step: int, initial_sparsity: float = 0.0, start_step: int = 0,
                 frequency: int = 1, scope: str = "layerwise", min_keep: float = 0.0,
                 score: str = "magnitude", leave_enabled: bool = True,
                 final_sparsity: Optional[float] = None, **kwargs) -> None:
        final_sparsity = check_target(renamed_keyword(type(self).__name__, "sparsity", sparsity,
                                                      "final_sparsity", final_sparsity))
        if scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
        self.schedule = GradualSchedule(initial_sparsity, final_sparsity, start_step, end_step,
                                        frequency)
        self.leave_enabled = bool(leave_enabled)
        allocation = "uniform" if scope == "layerwise" else "global"
        super().__init__(model, optimizer, sparsity=final_sparsity, allocation=allocation,
                         min_keep=min_keep, score=score, **kwargs)

    def _update(self, t, grads) -> bool:
        if self.schedule.is_update(t):
            self.prune_to(self.schedule.sparsity(t))
            return True
        if t == self.schedule.end_step + 1 and not self.leave_enabled:
            self.apply_masks({n: torch.ones(layer.shape, dtype=torch.bool)
                              for n, layer in self.layers.items()})
            return True
        return False


class IterativeMagnitudePruner(MagnitudePruner):
    """Iterative magnitude pruning with weight rewinding (Frankle & Carbin, "The Lottery
    Ticket Hypothesis", ICLR 2019; rewinding to an early step: Frankle et al., "Linear
    Mode Connectivity and the Lottery Ticket Hypothesis", ICML 2020).

    At tick ``rewind_step`` (0: the initialization) the model's parameters and buffers are
    saved. At the end of each round (every ``round_length`` ticks, ``rounds`` times) the
    fraction ``1 - (1 - sparsity) ** (1 / rounds)`` of the remaining weights with
    the smallest magnitude is pruned (``allocation`` "global" or "uniform"), then every
    saved tensor is restored (survivors get their saved values) and, with
    ``reset_optimizer``, the optimizer's state is cleared, as for a fresh run. After the
    last round, train the ticket as long as you like. ``final_sparsity=`` is ``sparsity``'s
    deprecated old name (DeprecationWarning).
    """

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: Optional[float] = None,
                 rounds: int, round_length: int, rewind_step: int = 0, allocation: str = "global",
                 min_keep: float = 0.0, reset_optimizer: bool = True,
                 final_sparsity: Optional[float] = None, **kwargs) -> None:
        final_sparsity = check_target(renamed_keyword(type(self).__name__, "sparsity", sparsity,
                                                      "final_sparsity", final_sparsity))
        self.schedule = IterativeSchedule(final_sparsity, rounds, round_length)
        if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) \
                or not 0 <= rewind_step < round_length:
            raise ValueError(f"rewind_step must be an int in [0, round_length), got {rewind_step!r}")
        self.rewind_step, self.reset_optimizer = rewind_step, bool(reset_optimizer)
        self.rewind_point: Optional[Dict[str, Any]] = None
        super().__init__(model, optimizer, sparsity=final_sparsity, allocation=allocation,
                         min_keep=min_keep, **kwargs)

    def _update(self, t, grads) -> bool:
        if t == self.rewind_step:
            self.rewind_point = self._snapshot()
        round_ = self.schedule.round_at(t)
        if not round_:
            return False
        self.prune_to(self.schedule.sparsity_after(round_))
        self.rewind()
        return True

    def _snapshot(self) -> Dict[str, Any]:
        """Dense weight of every pruned layer + every other parameter and buffer."""
        owned = set()
        for layer in self.layers.values():
            owned |= {id(p) for p in layer.module.parameters(recurse=False)}
            owned |= {id(b) for b in layer.module.buffers(recurse=False)}
        return {
            "layers": {n: {"weight": layer.weight().clone(),
                           "bias": None if layer.module.bias is None else layer.module.bias.detach().clone()}
                       for n, layer in self.layers.items()},
            "others": {n: t.detach().clone()
                       for n, t in list(self.model.named_parameters()) + list(self.model.named_buffers())
                       if id(t) not in owned},
        }

    def rewind(self) -> None:
        """Restore the saved tensors (pruned weights stay pruned)."""
        if self.rewind_point is None:
            raise RuntimeError("nothing to rewind to yet (rewind_step not reached)")
        with torch.no_grad():
            for name, saved in self.rewind_point["layers"].items():
                layer = self.layers[name]
                if layer.is_dense:
                    layer.module.weight.copy_(saved["weight"] * layer.mask())
                else:
                    pattern = layer.module.pattern
                    layer.module.values.copy_(pattern.gather(saved["weight"].reshape(pattern.shape)))
                if saved["bias"] is not None:
                    layer.module.bias.copy_(saved["bias"])
            current = dict(self.model.named_parameters())
            current.update(self.model.named_buffers())
            for name, value in self.rewind_point["others"].items():
                current[name].copy_(value)
        if self.reset_optimizer and self.optimizer is not None:
            self.optimizer.state.clear()

    def _extra_state(self) -> Dict[str, Any]:
        return {"rewind_point": self.rewind_point}

    def _load_extra_state(self, state: Dict[str, Any]) -> None:
        self.rewind_point = state.get("rewind_point")

"""Magnitude pruning: one-shot, gradual (Zhu & Gupta) and iterative with rewinding."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from .._validation import check_count as _check_count, renamed_keyword
from .allocation import as_allocation, check_target
from .base import Pruner
from .schedules import (GradualSchedule, IterativeSchedule, OneShotSchedule, Schedule,
                        check_schedule_keywords)
from .scores import as_score

__all__ = ["MagnitudePruner", "GradualMagnitudePruner", "IterativeMagnitudePruner"]

_SCOPES = ("layerwise", "global")


def _check_min_keep(min_keep: float, allocation) -> float:
    value = float(min_keep)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"min_keep must be in [0, 1], got {min_keep!r}")
    if value and isinstance(allocation, str) and allocation != "global":
        raise ValueError("min_keep applies to the 'global' allocation only")
    return value


class MagnitudePruner(Pruner):
    """One-shot pruning of the lowest-scoring weights at tick ``at`` (default: now).

    ``allocation``: ``"uniform"`` (every layer at ``sparsity``), ``"global"`` (one
    threshold over all layers; with ``min_keep=m`` each layer first keeps its top
    ``ceil(m * n)`` weights, which prevents layer collapse: Gupta et al. 2024), ``"er"`` or
    ``"erk"`` (per-layer densities from the shapes), or an
    :class:`~.allocation.Allocation`. ``score="lamp"`` with the global allocation is LAMP
    (Lee et al., ICLR 2021); ``score=`` also takes a :class:`~.scores.Score`. Only weights
    kept so far can be kept. The preset is ``MagnitudeScore()``, ``UniformAllocation()``,
    ``OneShotSchedule(at)``; ``schedule=`` replaces the last (then leave ``at`` unset).
    """

    _skips_unchanged = True

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: float,
                 allocation="uniform", min_keep: float = 0.0, score="magnitude",
                 at: int = 0, schedule: Optional[Schedule] = None, **kwargs) -> None:
        super().__init__(model, optimizer, **kwargs)
        target = check_target(sparsity)
        score = as_score(score)
        min_keep = _check_min_keep(min_keep, allocation)
        self.at = _check_count("at", at)
        allocation = as_allocation(allocation, min_keep)
        check_schedule_keywords(schedule, {"at": (at, 0)}, type(self).__name__)
        self._compose(target, score, allocation, OneShotSchedule(at) if schedule is None else schedule)
        self.min_keep = self.allocation.min_keep
        self._start()


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

    The preset is ``MagnitudeScore()`` (``score="lamp"``: ``LAMPScore()``), the scope's
    allocation and a :class:`~.schedules.GradualSchedule`; ``score=``, ``allocation=``
    (instead of ``scope``) and ``schedule=`` (instead of ``end_step``,
    ``initial_sparsity``, ``start_step``, ``frequency``) replace them, e.g.
    ``schedule=ACDCSchedule(...)`` prunes to ``sparsity`` in AC/DC's compressed phases.
    """

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: Optional[float] = None,
                 end_step: Optional[int] = None, initial_sparsity: float = 0.0, start_step: int = 0,
                 frequency: int = 1, scope: str = "layerwise", min_keep: float = 0.0,
                 score="magnitude", leave_enabled: bool = True,
                 final_sparsity: Optional[float] = None, allocation=None,
                 schedule: Optional[Schedule] = None, **kwargs) -> None:
        name = type(self).__name__
        if sparsity is None and final_sparsity is None:  # the schedule's own target, if any
            sparsity = getattr(schedule, "final_sparsity", None)
        final_sparsity = renamed_keyword(name, "sparsity", sparsity, "final_sparsity", final_sparsity)
        final_sparsity = check_target(final_sparsity)
        if scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}, got {scope!r}")
        check_schedule_keywords(schedule, {"end_step": (end_step, None), "initial_sparsity": (initial_sparsity, 0.0),
                                 "start_step": (start_step, 0), "frequency": (frequency, 1)}, name)
        if allocation is not None and scope != "layerwise":
            raise ValueError(f"{name}: give scope= or allocation=, not both")
        if schedule is None:
            if end_step is None:
                raise TypeError(f"{name} needs end_step= (or a schedule=)")
            schedule = GradualSchedule(initial_sparsity, final_sparsity, start_step, end_step,
                                       frequency)
        self.leave_enabled = bool(leave_enabled)
        if not self.leave_enabled and not isinstance(getattr(schedule, "end_step", None), int):
            raise ValueError(f"{name}: leave_enabled=False lifts the masks after the schedule's "
                             f"end_step, and {type(schedule).__name__} has none")
        if allocation is None:
            allocation = "uniform" if scope == "layerwise" else "global"
        super().__init__(model, optimizer, sparsity=final_sparsity, allocation=allocation,
                         min_keep=min_keep, score=score, schedule=schedule, **kwargs)

    def _update(self, t, grads) -> bool:
        if super()._update(t, grads):
            return True
        if not self.leave_enabled and t == self.schedule.end_step + 1:
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

    The preset is ``MagnitudeScore()``, the allocation and an
    :class:`~.schedules.IterativeSchedule`; ``score=`` and ``schedule=`` (instead of
    ``rounds`` and ``round_length``) replace them: every update of the schedule rewinds.
    """

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: Optional[float] = None,
                 rounds: Optional[int] = None, round_length: Optional[int] = None,
                 rewind_step: int = 0, allocation="global",
                 min_keep: float = 0.0, reset_optimizer: bool = True,
                 final_sparsity: Optional[float] = None, score="magnitude",
                 schedule: Optional[Schedule] = None, **kwargs) -> None:
        name = type(self).__name__
        if sparsity is None and final_sparsity is None:  # the schedule's own target, if any
            sparsity = getattr(schedule, "final_sparsity", None)
        final_sparsity = renamed_keyword(name, "sparsity", sparsity, "final_sparsity", final_sparsity)
        final_sparsity = check_target(final_sparsity)
        check_schedule_keywords(schedule, {"rounds": (rounds, None), "round_length": (round_length, None)}, name)
        if schedule is None:
            if rounds is None or round_length is None:
                raise TypeError(f"{name} needs rounds= and round_length= (or a schedule=)")
            schedule = IterativeSchedule(final_sparsity, rounds, round_length)
        limit = getattr(schedule, "round_length", None)
        if isinstance(rewind_step, bool) or not isinstance(rewind_step, int) or rewind_step < 0 \
                or (limit is not None and rewind_step >= limit):
            raise ValueError(f"rewind_step must be an int in [0, round_length), got {rewind_step!r}")
        self.rewind_step, self.reset_optimizer = rewind_step, bool(reset_optimizer)
        self.rewind_point: Optional[Dict[str, Any]] = None
        super().__init__(model, optimizer, sparsity=final_sparsity, allocation=allocation,
                         min_keep=min_keep, score=score, schedule=schedule, **kwargs)

    def _update(self, t, grads) -> bool:
        if t == self.rewind_step:
            self.rewind_point = self._snapshot()
        if not super()._update(t, grads):
            return False
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

"""Pruners whose masks keep changing during training: AC/DC, RigL and GraNet."""
from __future__ import annotations

from typing import Optional

from torch import nn

from .._validation import renamed_keyword
from .allocation import as_allocation, check_target
from .base import Pruner
from .regrowth import drop_and_grow
from .schedules import (ACDCSchedule, CosineUpdateSchedule, GradualSchedule, RegrowingSchedule,
                        Schedule, check_schedule_keywords)
from .scores import MagnitudeScore, RandomScore, as_score

# drop_and_grow lives in .regrowth (the base driver runs it); importable from here as before.
__all__ = ["ACDCPruner", "RigLPruner", "GraNetPruner", "drop_and_grow"]


class ACDCPruner(Pruner):
    """AC/DC (Peste et al., "AC/DC: Alternating Compressed/DeCompressed Training of Deep
    Neural Networks", NeurIPS 2021).

    Dense for ``warmup`` ticks, then compressed phases of ``sparse_length`` ticks
    alternate with decompressed phases of ``dense_length`` ticks, and the last
    ``final_sparse_length`` ticks of ``total`` are compressed. At the start of each
    compressed phase the top-magnitude weights at ``sparsity`` are kept (``allocation``
    "uniform" or "global") and the mask is fixed for the phase: the layers run on the
    sparse kernels (if at least ``sparse_from`` sparse). A decompressed phase turns them
    back into dense layers; the weights pruned in the last phase restart from zero.

    The preset is ``MagnitudeScore()``, the allocation and an
    :class:`~.schedules.ACDCSchedule`; ``score=`` (e.g. ``LAMPScore()``) and ``schedule=``
    (instead of ``total``, ``warmup``, ``sparse_length``, ``dense_length``,
    ``final_sparse_length``) replace them.
    """

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: float,
                 total: Optional[int] = None, warmup: Optional[int] = None,
                 sparse_length: Optional[int] = None, dense_length: Optional[int] = None,
                 final_sparse_length: Optional[int] = None, allocation="uniform",
                 score="magnitude", schedule: Optional[Schedule] = None, **kwargs) -> None:
        super().__init__(model, optimizer, **kwargs)
        target = check_target(sparsity)
        allocation = as_allocation(allocation)
        given = dict(total=total, warmup=warmup, sparse_length=sparse_length,
                     dense_length=dense_length, final_sparse_length=final_sparse_length)
        check_schedule_keywords(schedule, {n: (v, None) for n, v in given.items()},
                                type(self).__name__)
        if schedule is None:
            missing = [n for n, v in given.items() if v is None and n != "final_sparse_length"]
            if missing:
                raise TypeError(f"ACDCPruner needs {', '.join(n + '=' for n in missing)} "
                                f"(or a schedule=)")
            final = sparse_length if final_sparse_length is None else final_sparse_length
            schedule = ACDCSchedule(total, warmup, sparse_length, dense_length, final)
        self._compose(target, as_score(score), allocation, schedule)
        self._start()


class RigLPruner(Pruner):
    """RigL (Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020).

    Starts from random masks at ``sparsity`` (``allocation`` "erk" by default). Every
    ``frequency`` steps before ``end_step``, each layer drops the fraction
    ``alpha / 2 * (1 + cos(pi * t / end_step))`` of its weights with the smallest magnitude
    and regrows as many at the positions with the largest dense gradient, new weights at
    zero (a weight dropped and regrown in the same update keeps its value, as in the
    reference implementation); the sparsity never changes. Only the steps before an update compute a dense
    gradient (sparse layers form it from their input and output gradient); every other
    step stays sparse. Needs ``unit="step"``.

    The preset is ``RandomScore()`` (the initial masks), the allocation and a
    :class:`~.schedules.CosineUpdateSchedule`; ``score=`` (e.g. ``MagnitudeScore()``: start
    from the largest weights) and ``schedule=`` (instead of ``end_step``, ``frequency``,
    ``alpha``) replace them.
    """

    needs_gradients = True

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: float,
                 end_step: Optional[int] = None, frequency: int = 100, alpha: float = 0.3,
                 allocation="erk", score=None,
                 schedule: Optional[Schedule] = None, **kwargs) -> None:
        if kwargs.get("unit", "step") != "step":
            raise ValueError("RigL updates from one step's gradient: unit must be 'step'")
        super().__init__(model, optimizer, **kwargs)
        target = check_target(sparsity)
        allocation = as_allocation(allocation)
        check_schedule_keywords(schedule, {"end_step": (end_step, None), "frequency": (frequency, 100),
                                           "alpha": (alpha, 0.3)}, type(self).__name__)
        if schedule is None:
            if end_step is None:
                raise TypeError("RigLPruner needs end_step= (or a schedule=)")
            schedule = CosineUpdateSchedule(alpha, frequency, end_step)
        self._compose(target, RandomScore() if score is None else as_score(score), allocation,
                      schedule)
        self.updates = 0
        self._start()

    @property
    def _label(self):
        return "RigL"

    def _update(self, t, grads) -> bool:
        regrows = self.schedule.regrow_fraction(t) > 0
        changed = super()._update(t, grads)
        if changed and regrows:
            self.updates += 1
        return changed

    def _extra_state(self):
        return {"updates": self.updates}

    def _load_extra_state(self, state):
        self.updates = int(state.get("updates", 0))


class GraNetPruner(Pruner):
    """GraNet (Liu et al., "Sparse Training via Boosting Pruning Plasticity with
    Neuroregeneration", NeurIPS 2021): gradual magnitude pruning with regrowth.

    At every ``frequency`` ticks from ``start_step`` to ``end_step`` the weights are
    magnitude-pruned (one global threshold by default) to the cubic schedule's sparsity
    (``initial_sparsity`` -> ``sparsity``, as in :class:`GradualMagnitudePruner`);
    then each layer drops a further ``alpha / 2 * (1 + cos(pi * t / end_step))`` of its
    remaining weights by magnitude and regrows as many by dense gradient (at zero), as in
    RigL. Needs ``unit="step"``. ``final_sparsity=`` is ``sparsity``'s deprecated old name
    (DeprecationWarning).

    The preset is ``MagnitudeScore()``, the allocation and a
    :class:`~.schedules.RegrowingSchedule` of a :class:`~.schedules.GradualSchedule` and a
    :class:`~.schedules.CosineUpdateSchedule`; ``score=`` and ``schedule=`` (instead of
    ``end_step``, ``initial_sparsity``, ``start_step``, ``frequency``, ``alpha``) replace
    them.
    """

    needs_gradients = True

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: Optional[float] = None,
                 end_step: Optional[int] = None, initial_sparsity: float = 0.0,
                 start_step: int = 0, frequency: int = 100, alpha: float = 0.3,
                 allocation="global",
                 final_sparsity: Optional[float] = None, score="magnitude",
                 schedule: Optional[Schedule] = None, **kwargs) -> None:
        name = type(self).__name__
        if sparsity is None and final_sparsity is None:  # the schedule's own target, if any
            sparsity = getattr(schedule, "final_sparsity", None)
        final_sparsity = renamed_keyword(name, "sparsity", sparsity, "final_sparsity", final_sparsity)
        final_sparsity = check_target(final_sparsity)
        if kwargs.get("unit", "step") != "step":
            raise ValueError("GraNet regrows from one step's gradient: unit must be 'step'")
        super().__init__(model, optimizer, **kwargs)
        check_schedule_keywords(schedule, {"end_step": (end_step, None),
                                           "initial_sparsity": (initial_sparsity, 0.0),
                                           "start_step": (start_step, 0), "frequency": (frequency, 100),
                                           "alpha": (alpha, 0.3)}, name)
        if schedule is None:
            if end_step is None:
                raise TypeError(f"{name} needs end_step= (or a schedule=)")
            schedule = RegrowingSchedule(
                GradualSchedule(initial_sparsity, final_sparsity, start_step, end_step, frequency),
                CosineUpdateSchedule(alpha, frequency, end_step))
        allocation = as_allocation(allocation)
        score = as_score(score)
        if isinstance(score, MagnitudeScore) and allocation.name not in ("global", "uniform"):
            raise ValueError("GraNet prunes by magnitude: allocation must be 'global' or 'uniform'")
        self._compose(final_sparsity, score, allocation, schedule)
        self._start()

    @property
    def _label(self):
        return "GraNet"

    @property
    def prune_schedule(self) -> Schedule:
        """The pruning part of the schedule (the whole schedule if it does not regrow)."""
        return getattr(self.schedule, "prune", self.schedule)

    @property
    def regrow_schedule(self) -> Optional[CosineUpdateSchedule]:
        return getattr(self.schedule, "regrow", None)

"""Schedules: *when* to prune, and to what sparsity. Times are ticks: optimizer steps,
or epochs for a pruner built with ``unit="epoch"``. Tick 0 is the pruner's creation.

Every schedule is a :class:`Schedule`, what a pruner's ``schedule=`` takes: at each tick
it says whether to prune and to what sparsity (:meth:`Schedule.target`), whether to lift
the masks (:meth:`Schedule.releases`) and which fraction of the kept weights to drop and
regrow (:meth:`Schedule.regrow_fraction`)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .._validation import check_count as _check_count
from .allocation import check_target

__all__ = ["cubic_sparsity", "Schedule", "OneShotSchedule", "GradualSchedule", "ACDCSchedule",
           "CosineUpdateSchedule", "IterativeSchedule", "RegrowingSchedule", "check_schedule_keywords"]


class Schedule:
    """When a pruner updates its masks, and to what.

    Subclasses implement :meth:`target`; :meth:`releases` and :meth:`regrow_fraction`
    default to never. ``from_all_weights``: a pruning step may keep any weight (AC/DC's
    compressed phases choose afresh after a dense phase) instead of only the weights kept
    so far. ``regrows``: some tick has a nonzero :meth:`regrow_fraction` (the pruner then
    captures dense gradients before those ticks).
    """

    from_all_weights = False
    regrows = False

    def target(self, t: int, sparsity: float) -> Optional[float]:
        """The sparsity to prune to at tick ``t`` (``None``: no pruning then); ``sparsity``
        is the pruner's target."""
        raise NotImplementedError

    def releases(self, t: int) -> bool:
        """Whether tick ``t`` lifts every mask (the layers become dense)."""
        return False

    def regrow_fraction(self, t: int) -> float:
        """Fraction of each layer's kept weights dropped by magnitude and regrown by
        gradient at tick ``t`` (0: none)."""
        return 0.0


@dataclass(frozen=True)
class OneShotSchedule(Schedule):
    """Prune once, at tick ``at``, to the pruner's target."""

    at: int = 0

    def __post_init__(self):
        _check_count("at", self.at)

    def target(self, t, sparsity):
        return sparsity if t == self.at else None


def cubic_sparsity(t: int, initial: float, final: float, start: int, end: int) -> float:
    """Zhu & Gupta's schedule: ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3``
    for ``t0 <= t <= t0 + n * dt`` (here ``start`` and ``end``); ``s_i`` before, ``s_f`` after."""
    if t <= start:
        return initial
    if t >= end:
        return final
    return final + (initial - final) * (1.0 - (t - start) / (end - start)) ** 3


@dataclass(frozen=True)
class GradualSchedule(Schedule):
    """Gradual pruning (Zhu & Gupta, "To prune, or not to prune", 2017): the sparsity
    follows :func:`cubic_sparsity` and is applied every ``frequency`` ticks from
    ``start_step`` to ``end_step`` (and at ``end_step`` itself)."""

    initial_sparsity: float
    final_sparsity: float
    start_step: int
    end_step: int
    frequency: int

    def __post_init__(self):
        check_target(self.initial_sparsity, "initial_sparsity")
        check_target(self.final_sparsity, "final_sparsity")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"initial_sparsity ({self.initial_sparsity}) must not exceed "
                             f"final_sparsity ({self.final_sparsity})")
        _check_count("start_step", self.start_step)
        _check_count("end_step", self.end_step)
        _check_count("frequency", self.frequency, 1)
        if self.end_step <= self.start_step:
            raise ValueError(f"end_step ({self.end_step}) must come after start_step "
                             f"({self.start_step})")

    def is_update(self, t: int) -> bool:
        start, end = self.start_step, self.end_step
        return start <= t <= end and ((t - start) % self.frequency == 0 or t == end)

    def sparsity(self, t: int) -> float:
        return cubic_sparsity(t, self.initial_sparsity, self.final_sparsity, self.start_step,
                              self.end_step)

    def target(self, t, sparsity):
        """The cubic ramp's sparsity at its update ticks (its own ``final_sparsity``)."""
        return self.sparsity(t) if self.is_update(t) else None


@dataclass(frozen=True)
class ACDCSchedule(Schedule):
    """AC/DC phases (Peste et al., "AC/DC: Alternating Compressed/DeCompressed Training of
    Deep Neural Networks", NeurIPS 2021): dense for ``warmup`` ticks, then alternating
    compressed (``sparse_length``) and decompressed (``dense_length``) phases, and a final
    compressed phase over the last ``final_sparse_length`` ticks of ``total``."""

    total: int
    warmup: int
    sparse_length: int
    dense_length: int
    final_sparse_length: int

    def __post_init__(self):
        _check_count("total", self.total, 1)
        _check_count("warmup", self.warmup)
        _check_count("sparse_length", self.sparse_length, 1)
        _check_count("dense_length", self.dense_length, 1)
        _check_count("final_sparse_length", self.final_sparse_length, 1)
        if self.warmup + self.final_sparse_length > self.total:
            raise ValueError(f"warmup ({self.warmup}) + final_sparse_length "
                             f"({self.final_sparse_length}) exceed total ({self.total})")

    def is_sparse(self, t: int) -> bool:
        if t < self.warmup:
            return False
        if t >= self.total - self.final_sparse_length:
            return True
        return (t - self.warmup) % (self.sparse_length + self.dense_length) < self.sparse_length

    def starts_sparse_phase(self, t: int) -> bool:
        """True at the first tick of a compressed phase (a new mask is chosen there)."""
        return self.is_sparse(t) and (t == 0 or not self.is_sparse(t - 1))

    from_all_weights = True  # a compressed phase chooses among all weights

    def target(self, t, sparsity):
        return sparsity if self.starts_sparse_phase(t) else None

    def releases(self, t):
        """The first tick of a decompressed phase."""
        return t > 0 and not self.is_sparse(t) and self.is_sparse(t - 1)


@dataclass(frozen=True)
class CosineUpdateSchedule(Schedule):
    """RigL's prune-and-regrow timing (Evci et al., ICML 2020): every ``frequency`` ticks
    before ``end_step``, a fraction ``alpha / 2 * (1 + cos(pi * t / end_step))`` of each
    layer's weights is dropped and regrown. As a pruner's schedule it prunes to the
    target at tick 0 (sparse from the start, as RigL) and then only drops and regrows."""

    alpha: float
    frequency: int
    end_step: int

    def __post_init__(self):
        if not 0.0 < float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha!r}")
        _check_count("frequency", self.frequency, 1)
        _check_count("end_step", self.end_step, 1)

    def is_update(self, t: int) -> bool:
        return 0 < t < self.end_step and t % self.frequency == 0

    def fraction(self, t: int) -> float:
        if t >= self.end_step:
            return 0.0
        return self.alpha / 2.0 * (1.0 + math.cos(math.pi * t / self.end_step))

    regrows = True

    def target(self, t, sparsity):
        return sparsity if t == 0 else None

    def regrow_fraction(self, t):
        return self.fraction(t) if self.is_update(t) else 0.0


@dataclass(frozen=True)
class IterativeSchedule(Schedule):
    """Iterative magnitude pruning (Frankle & Carbin, "The Lottery Ticket Hypothesis",
    ICLR 2019): after each round of ``round_length`` ticks, prune the fraction
    ``1 - (1 - final_sparsity) ** (1 / rounds)`` of the remaining weights, so ``rounds``
    rounds reach ``final_sparsity``."""

    final_sparsity: float
    rounds: int
    round_length: int

    def __post_init__(self):
        check_target(self.final_sparsity, "final_sparsity")
        _check_count("rounds", self.rounds, 1)
        _check_count("round_length", self.round_length, 1)

    @property
    def rate(self) -> float:
        return 1.0 - (1.0 - self.final_sparsity) ** (1.0 / self.rounds)

    def round_at(self, t: int) -> int:
        """The round that ends at tick ``t`` (1-based), or 0 if none does."""
        if t > 0 and t % self.round_length == 0 and t // self.round_length <= self.rounds:
            return t // self.round_length
        return 0

    def sparsity_after(self, round_: int) -> float:
        return 1.0 - (1.0 - self.rate) ** round_

    def target(self, t, sparsity):
        """The sparsity after the round ending at ``t`` (its own ``final_sparsity``)."""
        round_ = self.round_at(t)
        return self.sparsity_after(round_) if round_ else None


@dataclass(frozen=True)
class RegrowingSchedule(Schedule):
    """``prune``'s updates, each followed (for ``0 < t < regrow.end_step``) by dropping
    ``regrow.fraction(t)`` of every layer's kept weights by magnitude and regrowing as many
    by gradient: GraNet (Liu et al., NeurIPS 2021) is a :class:`GradualSchedule` with a
    :class:`CosineUpdateSchedule`."""

    prune: Schedule
    regrow: CosineUpdateSchedule

    def __post_init__(self):
        if not isinstance(self.prune, Schedule):
            raise TypeError(f"prune must be a Schedule, got {type(self.prune).__name__}")
        if not isinstance(self.regrow, CosineUpdateSchedule):
            raise TypeError(f"regrow must be a CosineUpdateSchedule, got {type(self.regrow).__name__}")

    regrows = True

    @property
    def from_all_weights(self):
        return self.prune.from_all_weights

    @property
    def final_sparsity(self):
        return getattr(self.prune, "final_sparsity", None)

    @property
    def end_step(self):
        return getattr(self.prune, "end_step", self.regrow.end_step)

    def target(self, t, sparsity):
        return self.prune.target(t, sparsity)

    def releases(self, t):
        return self.prune.releases(t)

    def regrow_fraction(self, t):
        if 0 < t < self.regrow.end_step and self.prune.target(t, 0.0) is not None:
            return self.regrow.fraction(t)
        return 0.0


def check_schedule_keywords(schedule: Optional[Schedule], keywords: Dict[str, Tuple[Any, Any]],
                            algorithm: str) -> None:
    """A preset given ``schedule=`` must not also get the keywords that build its own
    schedule: ``keywords`` maps each to ``(value, default)``; any not at its default raises."""
    if schedule is None:
        return
    given = [name for name, (value, default) in keywords.items() if value != default]
    if given:
        raise ValueError(f"{algorithm}: give {', '.join(n + '=' for n in given)} or schedule=, "
                         f"not both")

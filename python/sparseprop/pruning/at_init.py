"""Pruning at initialization: random (ER / ERK densities), SNIP and SynFlow.

Each prunes once, when it is created, and then keeps the masks for the whole run (their
preset schedule is ``OneShotSchedule(0)``; ``schedule=`` may prune later or gradually)."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .._validation import check_count as _check_count
from .allocation import GlobalAllocation, as_allocation, check_target
from .base import Pruner
from .schedules import OneShotSchedule, Schedule
from .scores import RandomScore, SNIPScore, SynFlowScore, as_score

__all__ = ["RandomPruner", "SNIPPruner", "SynFlowPruner"]


def _part(value, default):
    """``value`` as a score, or ``default`` when not given."""
    return default if value is None else as_score(value)


class RandomPruner(Pruner):
    """Random pruning at initialization (Liu et al., "The Unreasonable Effectiveness of
    Random Pruning: Return of the Most Naive Baseline for Sparse Training", ICLR 2022).

    Each layer keeps a uniformly random subset of its weights, as many as its density
    under ``allocation``: ``"erk"`` (default; density proportional to
    ``(n_in + n_out + k_h + k_w) / (n_in * n_out * k_h * k_w)``), ``"er"``
    (``(n_in + n_out) / (n_in * n_out)``) or ``"uniform"``, scaled to ``sparsity`` overall
    with layers that would exceed density 1 kept dense (see :func:`er_densities`).
    The preset is ``RandomScore()``, the allocation and ``OneShotSchedule(0)``.
    """

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: float,
                 allocation="erk", score=None, schedule: Optional[Schedule] = None,
                 **kwargs) -> None:
        super().__init__(model, optimizer, **kwargs)
        target = check_target(sparsity)
        self._compose(target, _part(score, RandomScore()), as_allocation(allocation),
                      OneShotSchedule(0) if schedule is None else schedule)
        self._start()


class SNIPPruner(Pruner):
    """SNIP (Lee et al., "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity", ICLR 2019): keep the weights with the largest ``|g * w|`` on one batch
    ``(inputs, targets)``, one global threshold (``allocation="global"``) by default.
    The preset is ``SNIPScore(inputs, targets, loss_fn)``, the allocation and
    ``OneShotSchedule(0)`` (after which the batch is dropped)."""

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: float, inputs: torch.Tensor,
                 targets: torch.Tensor, loss_fn: Callable = nn.functional.cross_entropy,
                 allocation="global", score=None, schedule: Optional[Schedule] = None,
                 **kwargs) -> None:
        super().__init__(model, optimizer, **kwargs)
        target = check_target(sparsity)
        allocation = as_allocation(allocation)
        default = SNIPScore(inputs, targets, loss_fn)
        self.loss_fn = loss_fn
        self._compose(target, _part(score, default), allocation,
                      OneShotSchedule(0) if schedule is None else schedule)
        self._start()
        if schedule is None:
            default.release()  # do not hold on to the data: no update after tick 0


class SynFlowPruner(Pruner):
    """SynFlow (Tanaka et al., "Pruning neural networks without any data by iteratively
    conserving synaptic flow", NeurIPS 2020): data-free, in ``iterations`` rounds; round k
    rescores with the current masks and keeps the top ``(1 - sparsity) ** (k / iterations)``
    globally. Iterating is what avoids layer collapse. Only ``example_input``'s shape is used.
    The preset is ``SynFlowScore(example_input)``, ``GlobalAllocation()`` and
    ``OneShotSchedule(0)``; every pruning step of the schedule iterates.
    """

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: float,
                 example_input: torch.Tensor, iterations: int = 100, score=None,
                 allocation=None, schedule: Optional[Schedule] = None, **kwargs) -> None:
        super().__init__(model, optimizer, **kwargs)
        target = check_target(sparsity)
        _check_count("iterations", iterations, 1)
        default = SynFlowScore(example_input)  # TypeError for a bad example_input
        self.iterations = iterations
        self._compose(target, _part(score, default),
                      GlobalAllocation() if allocation is None else as_allocation(allocation),
                      OneShotSchedule(0) if schedule is None else schedule)
        self._start()

    def _select(self, sparsity, grads):
        """``iterations`` rounds of rescoring under the current masks, the kept fraction
        shrinking geometrically to ``1 - sparsity``."""
        masks = self.masks()
        allowed = None if self.schedule.from_all_weights else masks
        density, kernels = 1.0 - sparsity, self.kernels()
        for k in range(1, self.iterations + 1):
            scores = self.score.scores(self, masks, grads)
            masks = self.allocation.masks(scores, 1.0 - density ** (k / self.iterations),
                                          allowed if k == 1 else masks, kernels)
        return masks

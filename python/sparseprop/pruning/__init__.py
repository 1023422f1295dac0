"""Pruning algorithms on top of the sparse layers.

Each algorithm is a composition of three separate ideas:

* a **score** (:mod:`.scores`): which weights matter (magnitude, random, SNIP, SynFlow,
  gradient magnitude for regrowth, LAMP);
* a **layer allocation** (:mod:`.allocation`): how many weights each layer keeps
  (uniform, global, global with a per-layer minimum, ER, ERK);
* a **schedule** (:mod:`.schedules`): when (one-shot, gradual cubic, AC/DC phases,
  iterative rounds with rewinding, periodic prune-and-regrow).

The three are objects (:class:`Score`, :class:`Allocation`, :class:`Schedule`); every
named pruner is a preset of them and takes ``score=`` / ``allocation=`` / ``schedule=`` to
replace any, and ``Pruner(model, opt, sparsity=..., score=..., allocation=...,
schedule=...)`` builds any combination, e.g. LAMP scores on AC/DC's phases.

A :class:`Pruner` drives one algorithm: call ``pruner.step()`` after every
``optimizer.step()`` (or ``pruner.epoch_step()`` per epoch with ``unit="epoch"``). It
works on dense layers through masks and switches a layer to ``SparseLinear`` /
``SparseConv2d`` once it is at least ``sparse_from`` sparse, moving optimizer state along.
``pruner.history`` logs the sparsity per layer over time; ``state_dict()`` resumes a run.
"""
from .allocation import (ALLOCATIONS, Allocation, ERAllocation, ERKAllocation, GlobalAllocation,
                         UniformAllocation, er_densities, global_masks, uniform_counts)
from .at_init import RandomPruner, SNIPPruner, SynFlowPruner
from .base import Pruner
from .dynamic import ACDCPruner, GraNetPruner, RigLPruner
from .magnitude import GradualMagnitudePruner, IterativeMagnitudePruner, MagnitudePruner
from .schedules import (ACDCSchedule, CosineUpdateSchedule, GradualSchedule, IterativeSchedule,
                        OneShotSchedule, RegrowingSchedule, Schedule, cubic_sparsity)
from .scores import (GradientScore, LAMPScore, MagnitudeScore, RandomScore, Score, SNIPScore,
                     SynFlowScore)
from . import scores

__all__ = [
    "ALLOCATIONS", "ACDCPruner", "ACDCSchedule", "CosineUpdateSchedule", "GradualMagnitudePruner",
    "GradualSchedule", "GraNetPruner", "IterativeMagnitudePruner", "IterativeSchedule",
    "MagnitudePruner", "Pruner", "RandomPruner", "RigLPruner", "SNIPPruner", "SynFlowPruner",
    "cubic_sparsity", "er_densities", "global_masks", "scores", "uniform_counts",
    # the parts every pruner is composed of
    "Score", "MagnitudeScore", "LAMPScore", "RandomScore", "GradientScore", "SNIPScore",
    "SynFlowScore", "Allocation", "UniformAllocation", "GlobalAllocation", "ERAllocation",
    "ERKAllocation", "Schedule", "OneShotSchedule", "RegrowingSchedule",
]

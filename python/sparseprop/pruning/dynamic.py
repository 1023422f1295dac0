"""Pruners whose masks keep changing during training: AC/DC, RigL and GraNet."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from .._validation import renamed_keyword
from .allocation import allocate, check_allocation, check_target, topk_mask
from .base import Pruner
from .schedules import ACDCSchedule, CosineUpdateSchedule, GradualSchedule
from .scores import gradient_magnitude, magnitude, random_scores

__all__ = ["ACDCPruner", "RigLPruner", "GraNetPruner"]


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
    """

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: float, total: int,
                 warmup: int, sparse_length: int, dense_length: int,
                 final_sparse_length: Optional[int] = None, allocation: str = "uniform",
                 **kwargs) -> None:
        super().__init__(model, optimizer, **kwargs)
        self.target = check_target(sparsity)
        self.allocation = check_allocation(allocation)
        final = sparse_length if final_sparse_length is None else final_sparse_length
        self.schedule = ACDCSchedule(total, warmup, sparse_length, dense_length, final)
        self._start()

    def _update(self, t, grads) -> bool:
        schedule = self.schedule
        if schedule.starts_sparse_phase(t):
            scores = {n: magnitude(w) for n, w in self.weights().items()}
            self.apply_masks(allocate(scores, self.target, self.allocation, kernels=self.kernels()))
            return True
        if t > 0 and not schedule.is_sparse(t) and schedule.is_sparse(t - 1):
            self.apply_masks({n: torch.ones(layer.shape, dtype=torch.bool)
                              for n, layer in self.layers.items()})
            return True
        return False


def drop_and_grow(weight: torch.Tensor, mask: torch.Tensor, grad: torch.Tensor, count: int) -> torch.Tensor:
    """RigL's update of one layer: drop the ``count`` smallest-magnitude kept weights, then
    grow the ``count`` positions outside the remaining mask with the largest |gradient|."""
    nnz = int(torch.count_nonzero(mask))
    count = min(count, nnz, mask.numel() - nnz)
    if count <= 0:
        return mask
    kept = topk_mask(magnitude(weight), nnz - count, allowed=mask)
    grown = topk_mask(gradient_magnitude(grad), count, allowed=~kept)
    return kept | grown


def _require_grads(grads: Optional[Dict[str, torch.Tensor]], name: str) -> Dict[str, torch.Tensor]:
    if grads is None or any(g is None for g in grads.values()):
        raise RuntimeError(f"{name} needs the dense gradient of the step before an update: call "
                           f"pruner.step() after optimizer.step(), once per step that ran backward")
    return grads


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
    """

    needs_gradients = True

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: float, end_step: int,
                 frequency: int = 100, alpha: float = 0.3, allocation: str = "erk", **kwargs) -> None:
        if kwargs.get("unit", "step") != "step":
            raise ValueError("RigL updates from one step's gradient: unit must be 'step'")
        super().__init__(model, optimizer, **kwargs)
        self.target = check_target(sparsity)
        self.allocation = check_allocation(allocation)
        self.schedule = CosineUpdateSchedule(alpha, frequency, end_step)
        self.updates = 0
        self._start()

    def _wants_gradients(self, t: int) -> bool:
        return self.schedule.is_update(t)

    def _update(self, t, grads) -> bool:
        if t == 0:
            scores = {n: random_scores(w, self.generator) for n, w in self.weights().items()}
            self.apply_masks(allocate(scores, self.target, self.allocation, self.masks(),
                                      kernels=self.kernels()))
            return True
        if not self.schedule.is_update(t):
            return False
        grads = _require_grads(grads, "RigL")
        fraction = self.schedule.fraction(t)
        masks = {}
        for name, layer in self.layers.items():
            mask = layer.mask()
            count = int(fraction * int(torch.count_nonzero(mask)))
            masks[name] = drop_and_grow(layer.weight(), mask, grads[name], count)
        self.apply_masks(masks)
        self.updates += 1
        return True

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
    """

    needs_gradients = True

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: Optional[float] = None,
                 end_step: int, initial_sparsity: float = 0.0, start_step: int = 0,
                 frequency: int = 100, alpha: float = 0.3, allocation: str = "global",
                 final_sparsity: Optional[float] = None, **kwargs) -> None:
        final_sparsity = check_target(renamed_keyword(type(self).__name__, "sparsity", sparsity,
                                                      "final_sparsity", final_sparsity))
        if kwargs.get("unit", "step") != "step":
            raise ValueError("GraNet regrows from one step's gradient: unit must be 'step'")
        super().__init__(model, optimizer, **kwargs)
        self.prune_schedule = GradualSchedule(initial_sparsity, final_sparsity, start_step,
                                              end_step, frequency)
        self.regrow_schedule = CosineUpdateSchedule(alpha, frequency, end_step)
        if check_allocation(allocation) not in ("global", "uniform"):
            raise ValueError("GraNet prunes by magnitude: allocation must be 'global' or 'uniform'")
        self.allocation = allocation
        self._start()

    def _wants_gradients(self, t: int) -> bool:
        return self.prune_schedule.is_update(t) and t < self.prune_schedule.end_step

    def _update(self, t, grads) -> bool:
        if not self.prune_schedule.is_update(t):
            return False
        scores = {n: magnitude(w) for n, w in self.weights().items()}
        masks = allocate(scores, self.prune_schedule.sparsity(t), self.allocation, self.masks())
        if self._wants_gradients(t) and t > 0:
            grads = _require_grads(grads, "GraNet")
            fraction = self.regrow_schedule.fraction(t)
            weights = self.weights()
            for name in masks:
                count = int(fraction * int(torch.count_nonzero(masks[name])))
                masks[name] = drop_and_grow(weights[name], masks[name], grads[name], count)
        self.apply_masks(masks)
        return True

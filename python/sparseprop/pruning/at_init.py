"""Pruning at initialization: random (ER / ERK densities), SNIP and SynFlow.

Each prunes once, when it is created, and then keeps the masks for the whole run."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .._validation import check_count as _check_count
from .allocation import allocate, check_allocation, check_target
from .base import Pruner
from .scores import random_scores, snip, synflow

__all__ = ["RandomPruner", "SNIPPruner", "SynFlowPruner"]


class RandomPruner(Pruner):
    """Random pruning at initialization (Liu et al., "The Unreasonable Effectiveness of
    Random Pruning: Return of the Most Naive Baseline for Sparse Training", ICLR 2022).

    Each layer keeps a uniformly random subset of its weights, as many as its density
    under ``allocation``: ``"erk"`` (default; density proportional to
    ``(n_in + n_out + k_h + k_w) / (n_in * n_out * k_h * k_w)``), ``"er"``
    (``(n_in + n_out) / (n_in * n_out)``) or ``"uniform"``, scaled to ``sparsity`` overall
    with layers that would exceed density 1 kept dense (see :func:`er_densities`).
    """

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: float,
                 allocation: str = "erk", **kwargs) -> None:
        super().__init__(model, optimizer, **kwargs)
        self.target = check_target(sparsity)
        if check_allocation(allocation) == "global":
            raise ValueError("random scores need a per-layer allocation: 'erk', 'er' or 'uniform'")
        self.allocation = allocation
        self._start()

    def _update(self, t, grads) -> bool:
        if t != 0:
            return False
        scores = {n: random_scores(w, self.generator) for n, w in self.weights().items()}
        self.apply_masks(allocate(scores, self.target, self.allocation, self.masks(),
                                  kernels=self.kernels()))
        return True


class SNIPPruner(Pruner):
    """SNIP (Lee et al., "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity", ICLR 2019): keep the weights with the largest ``|g * w|`` on one batch
    ``(inputs, targets)``, one global threshold (``allocation="global"``) by default."""

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: float, inputs: torch.Tensor,
                 targets: torch.Tensor, loss_fn: Callable = nn.functional.cross_entropy,
                 allocation: str = "global", **kwargs) -> None:
        super().__init__(model, optimizer, **kwargs)
        self.target = check_target(sparsity)
        self.allocation = check_allocation(allocation)
        self._batch, self.loss_fn = (inputs, targets), loss_fn
        self._start()
        self._batch = None  # do not hold on to the data

    def _update(self, t, grads) -> bool:
        if t != 0:
            return False
        masks = self.masks()
        scores = snip(self.model, masks, *self._batch, loss_fn=self.loss_fn)
        self.apply_masks(allocate(scores, self.target, self.allocation, masks,
                                  kernels=self.kernels()))
        return True


class SynFlowPruner(Pruner):
    """SynFlow (Tanaka et al., "Pruning neural networks without any data by iteratively
    conserving synaptic flow", NeurIPS 2020): data-free, in ``iterations`` rounds; round k
    rescores with the current masks and keeps the top ``(1 - sparsity) ** (k / iterations)``
    globally. Iterating is what avoids layer collapse. Only ``example_input``'s shape is used.
    """

    def __init__(self, model: nn.Module, optimizer=None, *, sparsity: float,
                 example_input: torch.Tensor, iterations: int = 100, **kwargs) -> None:
        super().__init__(model, optimizer, **kwargs)
        self.target = check_target(sparsity)
        _check_count("iterations", iterations, 1)
        if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
            raise TypeError("example_input must be a batched tensor shaped like the model's input")
        self.iterations, self._example = iterations, example_input
        self._start()
        self._example = None

    def _update(self, t, grads) -> bool:
        if t != 0:
            return False
        masks = self.masks()
        density = 1.0 - self.target
        for k in range(1, self.iterations + 1):
            scores = synflow(self.model, masks, self._example)
            masks = allocate(scores, 1.0 - density ** (k / self.iterations), "global", masks)
        self.apply_masks(masks)
        return True

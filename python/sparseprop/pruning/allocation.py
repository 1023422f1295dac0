"""Layer allocation: how many weights each layer keeps, and the masks that keep them.

Scores decide *which* weights matter inside a layer; the allocation decides *how
many* each layer keeps for a global sparsity target:

* ``uniform``: every layer at the target sparsity.
* ``global``: one threshold over all layers' scores (the top ``(1 - s) * total`` win).
* ``global`` with ``min_keep=m``: every layer first keeps its own top ``ceil(m * n)``
  weights, then the rest of the budget goes by one global threshold. Plain global
  magnitude pruning can empty a layer ("layer collapse"); the floor prevents it
  (Gupta et al., "Is Complexity Required for Neural Network Pruning? A Case Study on
  Global Magnitude Pruning", 2024).
* ``er`` / ``erk``: densities from the layer's shape (Mocanu et al. 2018; Evci et al.
  2020; Liu et al., "The Unreasonable Effectiveness of Random Pruning", ICLR 2022).

Every function takes ``allowed`` masks (optional): weights outside them cannot be
kept, so repeated pruning only removes weights. The :class:`Allocation` objects
(:class:`UniformAllocation`, :class:`GlobalAllocation`, :class:`ERAllocation`,
:class:`ERKAllocation`) are what a pruner's ``allocation=`` takes (a name works too).
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple

import torch

from ..csr import check_sparsity, nnz_for, topk_mask  # noqa: F401  (topk_mask: also this module's)
from ..topk_select import top_k_mask

__all__ = ["ALLOCATIONS", "check_allocation", "check_target", "er_densities", "global_masks", "masks_from_counts",
           "topk_mask", "uniform_counts", "allocate", "Allocation", "UniformAllocation",
           "GlobalAllocation", "ERAllocation", "ERKAllocation", "as_allocation"]

ALLOCATIONS = ("uniform", "global", "er", "erk")
Scores = Mapping[str, torch.Tensor]


def check_target(sparsity: float, name: str = "sparsity") -> float:
    """A target sparsity: a number in [0, 1) (1 would remove every weight)."""
    value = check_sparsity(sparsity, name)
    if value >= 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {sparsity!r}")
    return value


def check_allocation(allocation: str) -> str:
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    return allocation


def masks_from_counts(scores: Scores, counts: Mapping[str, int],
                      allowed: Optional[Scores] = None) -> Dict[str, torch.Tensor]:
    """Each layer's top-``counts[name]`` mask by its own scores."""
    return {name: topk_mask(score, counts[name], None if allowed is None else allowed[name])
            for name, score in scores.items()}


def uniform_counts(numels: Mapping[str, int], sparsity: float) -> Dict[str, int]:
    """Every layer keeps ``round((1 - sparsity) * numel)`` weights."""
    sparsity = check_sparsity(sparsity)
    return {name: nnz_for(sparsity, n) for name, n in numels.items()}


def er_densities(kernels: Mapping[str, Tuple[int, int, int, int]], sparsity: float,
                 kind: str = "erk") -> Dict[str, float]:
    """Per-layer densities of the Erdos-Renyi (``er``) or Erdos-Renyi-Kernel (``erk``) rule.

    ``kernels`` maps a layer to ``(n_out, n_in, k_h, k_w)`` (``k_h = k_w = 1`` for a
    linear layer). Layer l's density is ``eps * raw_l`` with ``raw_l`` =
    ``(n_in + n_out + k_h + k_w) / (n_in * n_out * k_h * k_w)`` (ERK) or
    ``(n_in + n_out) / (n_in * n_out)`` (ER), and ``eps`` chosen so that the kept weights
    are ``(1 - sparsity)`` of all. A layer whose density would exceed 1 is made dense and
    ``eps`` is solved again over the others, until none exceeds 1.
    """
    if kind not in ("er", "erk"):
        raise ValueError(f"kind must be 'er' or 'erk', got {kind!r}")
    sparsity = check_sparsity(sparsity)
    numel = {name: math.prod(k) for name, k in kernels.items()}
    raw = {}
    for name, (n_out, n_in, k_h, k_w) in kernels.items():
        if kind == "erk":
            raw[name] = (n_in + n_out + k_h + k_w) / (n_in * n_out * k_h * k_w)
        else:
            raw[name] = (n_in + n_out) / (n_in * n_out)
    budget = (1.0 - sparsity) * sum(numel.values())
    dense: set = set()
    while True:
        free = [n for n in kernels if n not in dense]
        remaining = budget - sum(numel[n] for n in dense)
        weight = sum(raw[n] * numel[n] for n in free)
        eps = remaining / weight if weight > 0 else 0.0
        saturated = {n for n in free if eps * raw[n] > 1.0}
        if not saturated:
            break
        dense |= saturated
    return {n: 1.0 if n in dense else eps * raw[n] for n in kernels}


def global_masks(scores: Scores, sparsity: float, allowed: Optional[Scores] = None,
                 min_keep: float = 0.0) -> Dict[str, torch.Tensor]:
    """Masks keeping the ``round((1 - sparsity) * total)`` highest scores over all layers,
    after each layer has kept its own top ``ceil(min_keep * numel)`` (see module doc)."""
    sparsity = check_sparsity(sparsity)
    min_keep = check_sparsity(min_keep, "min_keep")
    total = sum(s.numel() for s in scores.values())
    budget = nnz_for(sparsity, total)
    reserved = {name: topk_mask(score, math.ceil(min_keep * score.numel()),
                                None if allowed is None else allowed[name])
                for name, score in scores.items()}
    n_reserved = sum(int(torch.count_nonzero(m)) for m in reserved.values())
    if n_reserved > budget:
        raise ValueError(f"min_keep={min_keep} keeps {n_reserved} weights, more than the "
                         f"{budget} a sparsity of {sparsity} allows")
    names = list(scores)
    flat = []
    for name in names:
        candidates = ~reserved[name]
        if allowed is not None:
            candidates &= allowed[name].bool()
        flat.append(scores[name].detach().float().flatten().masked_fill(~candidates.flatten(), -math.inf))
    flat = torch.cat(flat)
    k = min(budget - n_reserved, int(torch.count_nonzero(torch.isfinite(flat))))
    keep = top_k_mask(flat, k)
    masks, offset = {}, 0
    for name in names:
        n = scores[name].numel()
        masks[name] = keep[offset:offset + n].view(scores[name].shape) | reserved[name]
        offset += n
    return masks


def allocate(scores: Scores, sparsity: float, allocation: str = "uniform",
             allowed: Optional[Scores] = None, min_keep: float = 0.0,
             kernels: Optional[Mapping[str, Tuple[int, int, int, int]]] = None) -> Dict[str, torch.Tensor]:
    """Masks at ``sparsity`` overall, by ``allocation`` (one of :data:`ALLOCATIONS`).

    ``er``/``erk`` need ``kernels`` (layer shapes as ``(n_out, n_in, k_h, k_w)``)."""
    check_allocation(allocation)
    if allocation == "uniform":
        return masks_from_counts(scores, uniform_counts({n: s.numel() for n, s in scores.items()},
                                                        sparsity), allowed)
    if allocation == "global":
        return global_masks(scores, sparsity, allowed, min_keep)
    if kernels is None:
        raise ValueError(f"the {allocation!r} allocation needs the layers' kernel shapes")
    densities = er_densities(kernels, sparsity, allocation)
    counts = {n: int(round(densities[n] * s.numel())) for n, s in scores.items()}
    return masks_from_counts(scores, counts, allowed)


# --- Allocation objects: what a pruner's allocation= takes --------------------------------
class Allocation:
    """How a target sparsity is split across the layers. ``name`` is the rule's name in
    :func:`allocate`; ``per_layer`` is True when every layer's count is fixed before the
    scores are compared (uniform, ER, ERK), False for one threshold over all layers."""

    name = ""
    per_layer = True
    min_keep = 0.0

    def masks(self, scores: Scores, sparsity: float, allowed: Optional[Scores] = None,
              kernels: Optional[Mapping[str, Tuple[int, int, int, int]]] = None
              ) -> Dict[str, torch.Tensor]:
        """Masks keeping the top scores at ``sparsity`` overall (only ``allowed`` weights)."""
        return allocate(scores, sparsity, self.name, allowed, self.min_keep, kernels)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        if isinstance(other, str):  # pruner.allocation == "global" still reads as it did
            return other == self.name
        return type(self) is type(other) and vars(self) == vars(other)

    __hash__ = None


class UniformAllocation(Allocation):
    """Every layer at the target sparsity."""
    name = "uniform"


class GlobalAllocation(Allocation):
    """One threshold over all layers' scores; with ``min_keep=m`` each layer first keeps
    its own top ``ceil(m * n)`` (prevents layer collapse, see the module doc)."""
    name, per_layer = "global", False

    def __init__(self, min_keep: float = 0.0) -> None:
        value = float(min_keep)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"min_keep must be in [0, 1], got {min_keep!r}")
        self.min_keep = value

    def __repr__(self):
        return f"GlobalAllocation(min_keep={self.min_keep})" if self.min_keep else "GlobalAllocation()"


class ERAllocation(Allocation):
    """Erdos-Renyi densities from the layers' shapes (:func:`er_densities`)."""
    name = "er"


class ERKAllocation(Allocation):
    """Erdos-Renyi-Kernel densities from the layers' shapes (:func:`er_densities`)."""
    name = "erk"


_BY_NAME = {"uniform": UniformAllocation, "global": GlobalAllocation, "er": ERAllocation,
            "erk": ERKAllocation}


def as_allocation(allocation, min_keep: float = 0.0) -> Allocation:
    """An :class:`Allocation` from ``allocation=``: an Allocation, or a name of
    :data:`ALLOCATIONS` (``min_keep`` goes with ``"global"``)."""
    if isinstance(allocation, Allocation):
        if min_keep:
            raise ValueError("min_keep goes with a named allocation; give an Allocation object "
                             "its own (GlobalAllocation(min_keep=...))")
        return allocation
    if not isinstance(allocation, str):
        raise TypeError(f"allocation must be an Allocation (GlobalAllocation(), ...) or one of "
                        f"{ALLOCATIONS}, got {type(allocation).__name__}")
    check_allocation(allocation)
    if min_keep and allocation != "global":
        raise ValueError("min_keep applies to the 'global' allocation only")
    return GlobalAllocation(min_keep) if allocation == "global" else _BY_NAME[allocation]()

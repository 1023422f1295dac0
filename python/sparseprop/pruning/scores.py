"""Scores: how much each weight matters (higher is kept). Every score has the dense
weight's shape; pruned weights have weight 0, so magnitude-like scores rank them last."""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional

import torch
from torch import nn

__all__ = ["magnitude", "random_scores", "lamp", "gradient_magnitude", "snip", "synflow"]


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """|w| (Han et al. 2015; Zhu & Gupta 2017)."""
    return weight.detach().abs()


def random_scores(weight: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Uniform random scores: random pruning (Liu et al., ICLR 2022)."""
    return torch.rand(weight.shape, generator=generator)


def gradient_magnitude(grad: torch.Tensor) -> torch.Tensor:
    """|dL/dw|: RigL's regrowth score (Evci et al., "Rigging the Lottery", ICML 2020)."""
    return grad.detach().abs()


def lamp(weight: torch.Tensor) -> torch.Tensor:
    """Layer-adaptive magnitude-based pruning score (Lee et al., ICLR 2021).

    With the layer's weights sorted so that ``|w_1| <= |w_2| <= ... <= |w_n|``, weight u
    scores ``w_u^2 / sum_{v >= u} w_v^2``. The largest weight of every layer scores 1,
    so one global threshold on LAMP scores never empties a layer; scores are comparable
    across layers. Weights of equal magnitude are ordered by position (stable sort).
    """
    sq = weight.detach().double().flatten() ** 2
    order = torch.sort(sq, stable=True).indices
    sorted_sq = sq[order]
    # suffix sums: sum over v >= u of the sorted squares
    tail = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])
    score_sorted = torch.where(tail > 0, sorted_sq / tail.clamp_min(1e-300), torch.zeros_like(tail))
    score = torch.empty_like(sq)
    score[order] = score_sorted
    return score.float().view(weight.shape)


def _dense_copy(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A dense copy of ``model`` (sparse layers densified) with ``masks`` applied."""
    from ..convert import densify
    from ..module_tree import deepcopy_model

    clone = densify(deepcopy_model(model), inplace=True)
    with torch.no_grad():
        for name, mask in masks.items():
            clone.get_submodule(name).weight.mul_(mask)
    return clone


def snip(model: nn.Module, masks: Mapping[str, torch.Tensor], inputs, targets,
         loss_fn: Callable = nn.functional.cross_entropy) -> Dict[str, torch.Tensor]:
    """SNIP connection sensitivity |g * w| on one batch (Lee et al., ICLR 2019).

    Computed on a dense copy of ``model`` (with ``masks`` applied), so ``model``, its
    gradients and its BatchNorm statistics are untouched. Returns scores per name.
    """
    clone = _dense_copy(model, masks)
    clone.train(model.training)
    weights = {name: clone.get_submodule(name).weight for name in masks}
    loss = loss_fn(clone(inputs), targets)
    grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
    return {name: (torch.zeros_like(w) if g is None else (g * w).detach().abs())
            for (name, w), g in zip(weights.items(), grads)}


def synflow(model: nn.Module, masks: Mapping[str, torch.Tensor], example_input: torch.Tensor
            ) -> Dict[str, torch.Tensor]:
    """SynFlow scores |dR/dw * w| (Tanaka et al., "Pruning neural networks without any data
    by iteratively conserving synaptic flow", NeurIPS 2020).

    ``R = sum(f(1))``: the network with every weight replaced by its absolute value and
    biases set to zero (``masks`` applied), evaluated in float64 and eval mode on an all-ones input shaped
    like one sample of ``example_input``. Data-free: only the input's shape is used.
    """
    clone = _dense_copy(model, masks).double().eval()
    with torch.no_grad():
        for name, p in clone.named_parameters():
            # The paper's flow has no bias terms: positive biases would feed flow into
            # later layers and let the global threshold empty the early ones.
            if name.rsplit(".", 1)[-1] == "bias":
                p.zero_()
            else:
                p.abs_()
    weights = {name: clone.get_submodule(name).weight for name in masks}
    ones = torch.ones((1,) + tuple(example_input.shape[1:]), dtype=torch.float64)
    flow = clone(ones).sum()
    grads = torch.autograd.grad(flow, list(weights.values()), allow_unused=True)
    return {name: (torch.zeros(w.shape) if g is None else (g * w).detach().abs().float())
            for (name, w), g in zip(weights.items(), grads)}

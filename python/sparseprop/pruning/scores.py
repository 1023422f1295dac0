"""Scores: how much each weight matters (higher is kept). Every score has the dense
weight's shape; pruned weights have weight 0, so magnitude-like scores rank them last.

The functions compute one score; the :class:`Score` objects are what a pruner's
``score=`` takes: each ranks every pruned layer at once from what the pruner holds (its
layers, model, random generator and, for gradient scores, the dense gradient captured
over the step before the update)."""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional

import torch
from torch import nn

__all__ = ["magnitude", "random_scores", "lamp", "gradient_magnitude", "snip", "synflow",
           "Score", "MagnitudeScore", "LAMPScore", "RandomScore", "GradientScore", "SNIPScore",
           "SynFlowScore", "SCORES", "as_score"]


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


# --- Score objects: what a pruner's score= takes ------------------------------------------
Masks = Mapping[str, torch.Tensor]


class Score:
    """What ranks the weights of a pruner's layers (higher is kept).

    Subclasses implement :meth:`scores`. ``needs_gradients``: the score reads the dense
    gradient of the step before the update (the pruner captures it); such a score cannot
    prune at tick 0, when no backward pass has run.
    """

    needs_gradients = False
    name = ""  # a short name; the score compares equal to it (pruner.score == "lamp")

    def scores(self, pruner, masks: Masks, grads: Optional[Masks]) -> Dict[str, torch.Tensor]:
        """Scores of every layer of ``pruner`` (dense weight shape), with ``masks`` the
        weights kept so far and ``grads`` the captured dense gradients (or None)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            return bool(self.name) and other == self.name
        return type(self) is type(other) and vars(self) == vars(other)

    __hash__ = None


class _WeightScore(Score):
    """A score of each layer's weight alone."""

    def of(self, weight: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, pruner, masks, grads):
        return {name: self.of(layer.weight()) for name, layer in pruner.layers.items()}


class MagnitudeScore(_WeightScore):
    """|w| (:func:`magnitude`). With the uniform allocation a sparse layer is pruned
    inside its sparse form, without a dense score."""

    name = "magnitude"

    def of(self, weight):
        return magnitude(weight)


class LAMPScore(_WeightScore):
    """LAMP (:func:`lamp`): layer-adaptive magnitudes, comparable across layers (pair it
    with the global allocation)."""

    name = "lamp"

    def of(self, weight):
        return lamp(weight)


class RandomScore(Score):
    """Uniform random scores (:func:`random_scores`) from the pruner's seeded generator;
    needs a per-layer allocation (uniform, ER, ERK): a global threshold on random scores
    would size the layers by chance."""

    name = "random"

    def scores(self, pruner, masks, grads):
        return {name: random_scores(layer.weight(), pruner.generator)
                for name, layer in pruner.layers.items()}


class GradientScore(Score):
    """|dL/dw| of the step before the update (:func:`gradient_magnitude`), pruned
    positions included: RigL's regrowth score, here as a pruning score."""

    name = "gradient"

    needs_gradients = True

    def scores(self, pruner, masks, grads):
        if grads is None or any(grads.get(name) is None for name in pruner.layers):
            raise RuntimeError("GradientScore needs the dense gradient of the step before an "
                               "update: call pruner.step() after optimizer.step(), once per "
                               "step that ran backward")
        return {name: gradient_magnitude(grads[name]) for name in pruner.layers}


class SNIPScore(Score):
    """SNIP's |g * w| on one batch (:func:`snip`), on a dense copy of the model."""

    name = "snip"

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor,
                 loss_fn: Callable = nn.functional.cross_entropy) -> None:
        self.inputs, self.targets, self.loss_fn = inputs, targets, loss_fn

    def release(self) -> None:
        """Drop the batch (a pruner that scores only once does not hold on to the data)."""
        self.inputs = self.targets = None

    def scores(self, pruner, masks, grads):
        if self.inputs is None:
            raise RuntimeError("this SNIPScore's batch was released after its pruner's last update")
        return snip(pruner.model, masks, self.inputs, self.targets, loss_fn=self.loss_fn)

    def __repr__(self):
        return f"SNIPScore(inputs={tuple(getattr(self.inputs, 'shape', ()))})"

    def __eq__(self, other):  # holds data: equal only to itself (or its name)
        return other == self.name if isinstance(other, str) else other is self

    __hash__ = object.__hash__


class SynFlowScore(Score):
    """SynFlow's |dR/dw * w| (:func:`synflow`): data-free, only ``example_input``'s
    shape is used."""

    name = "synflow"

    def __init__(self, example_input: torch.Tensor) -> None:
        if not isinstance(example_input, torch.Tensor) or example_input.dim() < 1:
            raise TypeError("example_input must be a batched tensor shaped like the model's input")
        # Only the shape matters: keep an empty batch, not the data.
        self.example_input = torch.empty((0,) + tuple(example_input.shape[1:]))

    def scores(self, pruner, masks, grads):
        return synflow(pruner.model, masks, self.example_input)

    def __repr__(self):
        return f"SynFlowScore(sample_shape={tuple(self.example_input.shape[1:])})"

    def __eq__(self, other):
        if isinstance(other, str):
            return other == self.name
        return type(other) is SynFlowScore and other.example_input.shape == self.example_input.shape

    __hash__ = None


SCORES = {"magnitude": MagnitudeScore, "lamp": LAMPScore}


def as_score(score) -> Score:
    """A :class:`Score` from ``score=``: a Score, or the name of a weight score
    (``"magnitude"``, ``"lamp"``)."""
    if isinstance(score, Score):
        return score
    if isinstance(score, str) or score is None:
        if score not in SCORES:
            raise ValueError(f"score must be one of {tuple(SCORES)}, got {score!r}")
        return SCORES[score]()
    raise TypeError(f"score must be a Score (MagnitudeScore(), LAMPScore(), ...) or one of "
                    f"{tuple(SCORES)}, got {type(score).__name__}")

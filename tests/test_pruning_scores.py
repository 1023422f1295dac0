"""Scores (sparseprop.pruning.scores): magnitude, gradient and LAMP, against hand values."""
from __future__ import annotations

import pytest
import torch

from sparseprop.pruning import scores

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest)


# --------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------
def test_lamp_hand_values():
    w = torch.tensor([0.5, -2.0, 1.0, 0.0, 1.5])
    # squares 0.25, 4, 1, 0, 2.25; ascending: 0, 0.25, 1, 2.25, 4; suffix sums 7.5, 7.5,
    # 7.25, 6.25, 4
    expected = torch.tensor([0.25 / 7.5, 1.0, 1.0 / 7.25, 0.0, 2.25 / 6.25])
    torch.testing.assert_close(scores.lamp(w), expected)
    # a 2-D weight is one layer: one score of 1, the shape is kept, scaling changes nothing
    out = scores.lamp(torch.cat([w, w * 3]).view(2, 5))
    assert out.shape == (2, 5)
    assert out.max() == 1.0 and int((out == 1.0).sum()) == 1
    torch.testing.assert_close(scores.lamp(w * 7), expected)


def test_lamp_ties_are_stable_and_max_is_one():
    torch.testing.assert_close(scores.lamp(torch.tensor([1.0, -1.0])), torch.tensor([0.5, 1.0]))
    for scale in (1e-4, 1.0, 1e3):
        w = torch.randn(6, 5) * scale
        s = scores.lamp(w)
        assert s.flatten()[w.abs().argmax()] == pytest.approx(1.0)
        assert (s <= 1.0 + 1e-6).all() and (s >= 0).all()
        # order-preserving within a layer
        order = w.abs().flatten().argsort()
        assert (s.flatten()[order].diff() >= -1e-7).all()


def test_magnitude_and_gradient_scores():
    w = torch.tensor([[-3.0, 0.5], [0.0, 2.0]], requires_grad=True)
    assert scores.magnitude(w).tolist() == [[3.0, 0.5], [0.0, 2.0]]
    assert not scores.magnitude(w).requires_grad
    assert scores.gradient_magnitude(-w).tolist() == [[3.0, 0.5], [0.0, 2.0]]

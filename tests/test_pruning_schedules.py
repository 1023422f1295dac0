"""Pruning schedules (sparseprop.pruning.schedules): when each algorithm updates and to
what sparsity, against values computed by hand."""
from __future__ import annotations

import math

import pytest

from sparseprop.pruning import (ACDCSchedule, CosineUpdateSchedule, GradualSchedule,
                                IterativeSchedule, cubic_sparsity)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread (conftest)


# --------------------------------------------------------------------------------------
# cubic schedule
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("t, expected", [
    (0, 0.0), (9, 0.0), (10, 0.0),
    (35, 0.9 - 0.9 * 0.75 ** 3),  # (1 - 25/100)^3
    (60, 0.9 - 0.9 * 0.125),      # = 0.7875
    (85, 0.9 - 0.9 * 0.25 ** 3),
    (109, 0.9 - 0.9 * 0.01 ** 3),
    (110, 0.9), (111, 0.9), (10_000, 0.9),
])
def test_cubic_sparsity_values(t, expected):
    assert cubic_sparsity(t, 0.0, 0.9, 10, 110) == pytest.approx(expected, abs=1e-12)
    sched = GradualSchedule(0.0, 0.9, 10, 110, 5)
    assert sched.sparsity(t) == pytest.approx(expected, abs=1e-12)


def test_cubic_sparsity_nonzero_initial():
    # before start: the initial sparsity; midway: s_f + (s_i - s_f) / 8
    assert cubic_sparsity(3, 0.2, 0.9, 10, 110) == pytest.approx(0.2)
    assert cubic_sparsity(60, 0.2, 0.9, 10, 110) == pytest.approx(0.9 - 0.7 * 0.125)
    assert cubic_sparsity(110, 0.2, 0.9, 10, 110) == pytest.approx(0.9)
    assert cubic_sparsity(60, 0.2, 0.9, 10, 110) == pytest.approx(0.8125)


def test_cubic_sparsity_is_monotone():
    values = [cubic_sparsity(t, 0.1, 0.95, 5, 55) for t in range(70)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    # the cubic front-loads the pruning: half the time gives 7/8 of the increase
    assert values[30] - 0.1 == pytest.approx(0.85 * 7 / 8)


def test_gradual_is_update_every_frequency_and_at_end():
    sched = GradualSchedule(0.0, 0.9, 10, 45, 10)  # 35 is not a multiple of 10
    updates = [t for t in range(0, 80) if sched.is_update(t)]
    assert updates == [10, 20, 30, 40, 45]
    sched = GradualSchedule(0.0, 0.9, 0, 6, 2)
    assert [t for t in range(20) if sched.is_update(t)] == [0, 2, 4, 6]
    sched = GradualSchedule(0.0, 0.9, 3, 4, 7)
    assert [t for t in range(20) if sched.is_update(t)] == [3, 4]


# --------------------------------------------------------------------------------------
# other schedules
# --------------------------------------------------------------------------------------
def test_acdc_schedule_phases():
    sched = ACDCSchedule(total=20, warmup=4, sparse_length=3, dense_length=2,
                         final_sparse_length=5)
    # warmup 0-3 dense; 4-6 compressed; 7-8 dense; 9-11 compressed; 12-13 dense;
    # 14-16 would be the next compressed phase and runs into the final one (15-19).
    sparse_ticks = {4, 5, 6, 9, 10, 11, 14, 15, 16, 17, 18, 19}
    for t in range(20):
        assert sched.is_sparse(t) == (t in sparse_ticks), t
    for t in range(20, 30):
        assert sched.is_sparse(t)  # past the end: still compressed
    assert [t for t in range(30) if sched.starts_sparse_phase(t)] == [4, 9, 14]


def test_acdc_schedule_without_warmup_starts_sparse_at_zero():
    sched = ACDCSchedule(total=10, warmup=0, sparse_length=2, dense_length=2,
                         final_sparse_length=2)
    assert [sched.is_sparse(t) for t in range(10)] == [True, True, False, False, True, True,
                                                       False, False, True, True]
    assert [t for t in range(10) if sched.starts_sparse_phase(t)] == [0, 4, 8]


def test_cosine_update_schedule():
    sched = CosineUpdateSchedule(alpha=0.3, frequency=4, end_step=20)
    assert [t for t in range(40) if sched.is_update(t)] == [4, 8, 12, 16]
    assert sched.fraction(0) == pytest.approx(0.3)
    assert sched.fraction(10) == pytest.approx(0.15)
    assert sched.fraction(5) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert sched.fraction(20) == 0.0 and sched.fraction(25) == 0.0


def test_iterative_schedule():
    sched = IterativeSchedule(final_sparsity=0.875, rounds=3, round_length=5)
    assert sched.rate == pytest.approx(0.5)
    assert [sched.round_at(t) for t in range(25)] == \
        [0] * 5 + [1] + [0] * 4 + [2] + [0] * 4 + [3] + [0] * 9
    assert [sched.sparsity_after(r) for r in range(4)] == pytest.approx([0, 0.5, 0.75, 0.875])

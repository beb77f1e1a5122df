"""bench.stats against independent computations: intervals, Welch's test, tied ranks, probability of improvement."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from bench.report.stats import probability_of_improvement, t_interval, tied_ranks, welch_p


def test_t_interval_matches_scipy_and_covers_the_mean_95_percent_of_the_time():
    values = [3.1, 2.7, 3.6, 3.3]
    low, high = t_interval(values)
    ref = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert (low, high) == pytest.approx(ref, rel=1e-12)
    assert t_interval([1.0]) is None  # n = 1: nothing claimed
    rng = np.random.default_rng(0)
    covered = sum(lo <= 5.0 <= hi for lo, hi in (t_interval(list(rng.normal(5.0, 2.0, 3))) for _ in range(4000)))
    assert abs(covered / 4000 - 0.95) < 0.015  # three seeds: the t interval keeps its level, a z interval would not


def test_welch_p_by_hand():
    a, b = [1.0, 2.0, 3.0, 4.0], [3.0, 5.0, 7.0]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch–Satterthwaite
    assert welch_p(a, b) == pytest.approx(2 * sps.t.sf(abs(t), dof), rel=1e-10)
    assert welch_p([1.0], b) is None
    assert welch_p([2.0, 2.0], [3.0, 3.0]) == 0.0 and welch_p([2.0, 2.0], [2.0, 2.0]) == 1.0


def test_ranks_tie_what_seeds_cannot_separate():
    apart = [[1.0, 1.1, 0.9], [5.0, 5.1, 4.9], [9.0, 9.2, 8.8]]
    assert tied_ranks(apart) == ["1", "2", "3"]
    overlapping = [[1.0, 3.0, 2.0], [2.5, 1.5, 2.2], [9.0, 9.2, 8.8]]  # the first two cannot be told apart
    assert tied_ranks(overlapping) == ["1=", "1=", "3"]
    assert tied_ranks([[5.0, 5.1, 4.9], [1.0, 1.1, 0.9]]) == ["2", "1"]  # the input order does not matter
    assert tied_ranks([[2.0], [1.0], [3.0]]) == ["1=", "1=", "1="]  # n = 1: untestable, so every rank is shared
    # a single-seed row on top (external samples) shares the first rank but does not tie the models below it
    with_single = [[0.1], [16.0, 17.0, 15.5], [33.0, 30.0, 36.0], [34.0, 31.0, 35.0], [90.0, 91.0, 92.0]]
    assert tied_ranks(with_single) == ["1=", "1=", "3=", "3=", "5"]
    assert tied_ranks([[16.0, 17.0, 15.5], [20.0], [33.0, 30.0, 36.0]]) == ["1=", "1=", "3"]
    assert tied_ranks([[9.0, 9.1], [1.0, 1.1]], lower_is_better=False) == ["1", "2"]


def test_probability_of_improvement_is_mann_whitney_u_over_the_pairs():
    a, b = [1.0, 2.0, 3.0, 3.0], [2.5, 3.0, 4.0]
    u = sps.mannwhitneyu(b, a).statistic  # pairs where b > a, ties half: a seed of a has the lower (better) FID
    assert probability_of_improvement(a, b) == pytest.approx(u / (len(a) * len(b)))
    assert probability_of_improvement(a, b) + probability_of_improvement(b, a) == pytest.approx(1.0)
    assert probability_of_improvement([1.0, 2.0], [5.0, 6.0]) == 1.0
    assert probability_of_improvement([9.0], [1.0], lower_is_better=False) == 1.0

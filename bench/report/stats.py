"""Uncertainty over training seeds: what a leaderboard may claim about a mean and a rank (torch-free).

- `t_interval`: the 95% Student-t confidence interval of a mean over n ≥ 2 seeds (mean ± t₀.₉₇₅,ₙ₋₁ · s/√n).
- `welch_p`: Welch's two-sided t-test between two models' seeds (unequal variances), None when a side has n < 2.
- `tied_ranks`: ranks in which a model that is not significantly different (Welch, α = 0.05) from the best model
  (with n ≥ 2) of its group shares that model's rank, marked "=" ("1=", "1=", "3").
- `probability_of_improvement`: P(a random seed of A beats a random seed of B), ties counting half: the
  Mann-Whitney U statistic over nA·nB, the pairwise measure of Agarwal et al. 2021 ("Deep Reinforcement Learning at
  the Edge of the Statistical Precipice").
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats as scipy_stats

ALPHA = 0.05  # the significance level of the ranks' tests
CONFIDENCE = 0.95


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """(low, high) of the Student-t interval of the mean; None with fewer than 2 values."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return mean - half, mean + half


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; None when either side has fewer than 2 seeds (nothing can be claimed).
    Two constant samples: 0 when their values differ, 1 when they are equal."""
    if len(a) < 2 or len(b) < 2:
        return None
    if len(set(a)) == 1 and len(set(b)) == 1:
        return 1.0 if a[0] == b[0] else 0.0
    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def tied_ranks(samples: Sequence[Sequence[float]], lower_is_better: bool = True, alpha: float = ALPHA) -> list[str]:
    """Ranks of models given per-seed values, in their order by mean. Going down that order, each model is tested
    against the leader of the current group, its first model with n ≥ 2 seeds: not significantly different → it
    joins the group and shares its rank; otherwise it starts a new group ranked by its position. A model with n < 2
    cannot be tested: it joins the group it falls in and never leads one, so a single-seed row (say, external
    samples) cannot tie every model below it together. A group of untestable rows is joined by the next model.
    Shared ranks carry "="."""
    means = [sum(s) / len(s) if len(s) else math.nan for s in samples]
    order = sorted(range(len(samples)), key=lambda i: (math.isnan(means[i]), means[i] * (1 if lower_is_better else -1)))
    rank = [0] * len(samples)
    group_rank, leader = None, None
    for position, i in enumerate(order, 1):
        testable = len(samples[i]) >= 2
        if group_rank is not None and (not testable or leader is None):
            rank[i] = group_rank  # untestable, or nothing testable to test against yet
            leader = leader if leader is not None or not testable else i
            continue
        if group_rank is not None:
            p = welch_p(samples[leader], samples[i])
            if p >= alpha:
                rank[i] = group_rank
                continue
        group_rank, rank[i] = position, position
        leader = i if testable else None
    shared = {r for r in rank if rank.count(r) > 1}
    return [f"{r}=" if r in shared else str(r) for r in rank]


def probability_of_improvement(a: Sequence[float], b: Sequence[float], lower_is_better: bool = True) -> float:
    """P(X < Y) for X a seed of A and Y one of B (X > Y when higher is better), ties counting one half."""
    if not a or not b:
        return math.nan
    wins = 0.0
    for x in a:
        for y in b:
            if x == y:
                wins += 0.5
            elif (x < y) == lower_is_better:
                wins += 1.0
    return wins / (len(a) * len(b))

"""Uncertainty over training seeds: what a leaderboard may claim about a mean and a rank (torch-free).

- `t_interval`: the 95% Student-t confidence interval of a mean over n ≥ 2 seeds (mean ± t₀.₉₇₅,ₙ₋₁ · s/√n).
- `welch_p`: Welch's two-sided t-test between two models' seeds (unequal variances), None when a side has n < 2.
- `student_p`: Student's pooled two-sided t-test (exact when both models' seeds come from one normal distribution).
- `pair_p`: the p-value a table's pairs are tested by: the larger of Welch's and Student's, so a pair is separated
  only when both tests reject. Welch alone separated two identical models with 2 and 5 seeds in 6.3% of tables (its
  degrees of freedom overstate what 2 seeds know); Student's alone breaks down when the seed spreads differ.
- `holm`: Holm's step-down adjustment of a family of p-values (family-wise error ≤ α under any dependence).
- `ranking`: every pair of testable models (n ≥ 2) compared by `pair_p`, Holm-adjusted over all pairs; each
  model's rank is the interval of ranks the separations allow, its group letters a compact letter display (models
  that share a letter are not separated), and the models no other model beats are tied for best. Rows with n < 2
  are shown unranked.
- `probability_of_improvement`: P(a random seed of A beats a random seed of B), ties counting half: the
  Mann-Whitney U statistic over nA·nB, the pairwise measure of Agarwal et al. 2021 ("Deep Reinforcement Learning at
  the Edge of the Statistical Precipice"); `improvement_interval` its percentile bootstrap interval over seeds.
- `expected_best`: the expected best score of k trials drawn without replacement from a sweep's B trials, for every
  k = 1…B (exact, from the order statistics; Lucic et al. 2018's budget curve, Dodge et al. 2019's "expected
  validation performance"); failed trials count as draws that found nothing; `all_fail` the chance that all k
  fail; `expected_best_band` its percentile bootstrap band over the trials.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import special
from scipy import stats as scipy_stats

ALPHA = 0.05  # the family-wise error rate of a table's separations
CONFIDENCE = 0.95
UNRANKED = "—"  # the rank of a row that cannot be tested (n < 2)


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
    (ma, va), (mb, vb) = _mean_var(a), _mean_var(b)
    sa, sb = va / len(a), vb / len(b)  # the squared standard errors of the two means
    t = (ma - mb) / math.sqrt(sa + sb)
    df = (sa + sb) ** 2 / (sa**2 / (len(a) - 1) + sb**2 / (len(b) - 1))  # Welch-Satterthwaite
    return float(2.0 * special.stdtr(df, -abs(t)))


def student_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Student's pooled-variance t-test (na + nb − 2 degrees of freedom); None when either side
    has fewer than 2 seeds. Two constant samples: 0 when their values differ, 1 when they are equal."""
    if len(a) < 2 or len(b) < 2:
        return None
    if len(set(a)) == 1 and len(set(b)) == 1:
        return 1.0 if a[0] == b[0] else 0.0
    (ma, va), (mb, vb) = _mean_var(a), _mean_var(b)
    df = len(a) + len(b) - 2
    pooled = ((len(a) - 1) * va + (len(b) - 1) * vb) / df
    t = (ma - mb) / math.sqrt(pooled * (1 / len(a) + 1 / len(b)))
    return float(2.0 * special.stdtr(df, -abs(t)))


def pair_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The p-value two models are compared by: max(Welch, Student), i.e. separated only when both tests reject.
    With equal seed counts it is Welch's (same t, fewer degrees of freedom). With unequal counts Welch's
    Satterthwaite degrees of freedom trust the smaller side's variance too much (two identical models, 2 vs 5 seeds:
    6.3% false separations at α = 5%), while Student's test is exact for identical models; requiring both keeps
    identical models under α (2.6% at 2 vs 5) and keeps Welch's protection when the spreads differ."""
    welch, student = welch_p(a, b), student_p(a, b)
    return None if welch is None or student is None else max(welch, student)


def _mean_var(values: Sequence[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, sum((v - mean) ** 2 for v in values) / (len(values) - 1)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (Holm 1979): the i-th smallest of m is multiplied by (m − i + 1), made monotone and
    capped at 1. Rejecting where the adjusted p < α keeps the chance of any false rejection ≤ α."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for position, i in enumerate(order):
        running = max(running, min(1.0, (m - position) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class Ranking:
    """What a table may claim about the order of its rows (in their input order)."""

    rank: list[str]  # "1", "2–3" (the ranks the tests allow), or UNRANKED (n < 2)
    letters: list[str]  # compact letter display: rows sharing a letter are not separated; "" when unranked
    tied_best: list[bool]  # no testable row is significantly better (False for every row when none is testable)
    better: list[list[bool]]  # better[i][j]: i is significantly better than j (Holm-adjusted Welch, α)
    pairs: int  # the size of the family the Holm adjustment covered


def ranking(samples: Sequence[Sequence[float]], lower_is_better: bool = True, alpha: float = ALPHA) -> Ranking:
    """Ranks, tie groups and the tied-best rows of models given per-seed values.

    All pairs of testable rows (n ≥ 2) are compared by `pair_p` (Welch's and Student's tests both) and the p-values
    Holm-adjusted over the family, so that the chance of separating any two identical models is at most α, whatever
    the number of models and their seed counts. A
    row's rank is the interval from 1 + (rows above it) to k − (rows below it) in the transitive closure of the
    separations, k the testable rows: "1–2" reads "first or second: the seeds cannot say which". Groups: a compact
    letter display (Piepho 2004, insert-and-absorb), letters ordered by mean, in which two rows share a letter
    exactly when they are not separated (in the closure), so the groups cannot contradict the tests. A row with
    n < 2 (external samples, one seed) cannot be tested, nor one with a non-finite seed value: it is shown, never
    ranked or grouped."""
    k = len(samples)
    sign = 1.0 if lower_is_better else -1.0
    means = [sum(s) / len(s) if len(s) else math.nan for s in samples]
    # a row with a non-finite seed (a diverged run) cannot be tested in this column; the others still can
    testable = [i for i in range(k) if len(samples[i]) >= 2 and all(math.isfinite(v) for v in samples[i])]
    pairs = list(combinations(testable, 2))
    adjusted = holm([pair_p(samples[i], samples[j]) for i, j in pairs])
    better = [[False] * k for _ in range(k)]
    for (i, j), p in zip(pairs, adjusted, strict=True):
        if p < alpha:
            a, b = (i, j) if sign * means[i] < sign * means[j] else (j, i)
            better[a][b] = True
    above = _closure(better, testable)  # i > j and j > l separated: i > l is implied, whatever i vs l's own test
    rank, letters, tied = [UNRANKED] * k, [""] * k, [False] * k
    order = sorted(testable, key=lambda i: sign * means[i])
    for i in testable:
        high = 1 + sum(above[j][i] for j in testable)
        low = len(testable) - sum(above[i][j] for j in testable)
        rank[i] = str(high) if high == low else f"{high}–{low}"
        tied[i] = high == 1
    separated = {(i, j) for i in testable for j in testable if above[i][j] or above[j][i]}
    for i, text in zip(order, compact_letters(order, separated), strict=True):
        letters[i] = text
    return Ranking(rank, letters, tied, better, len(pairs))


def _closure(better: list[list[bool]], rows: Sequence[int]) -> list[list[bool]]:
    """The transitive closure of the separations (Warshall): if every separation is right, as the family-wise error
    control claims with probability ≥ 1 − α, so is every order they imply. Separations with unequal seed counts are
    not transitive by themselves (1 > 2 and 2 > 4 separated, 1 vs 4 not)."""
    closed = [row[:] for row in better]
    for m in rows:
        for i in rows:
            if closed[i][m]:
                for j in rows:
                    closed[i][j] = closed[i][j] or closed[m][j]
    return closed


def compact_letters(order: Sequence[int], separated: set[tuple[int, int]]) -> list[str]:
    """Letters for the rows `order` (best first) such that two rows share a letter if and only if (i, j) is not in
    `separated` (Piepho 2004's insert-and-absorb): start from one letter holding every row; for each separated pair,
    split every letter holding both into a copy without i and a copy without j; drop letters contained in another.
    Letters are then named a, b, ... in the order of their best row."""
    columns = [set(order)] if order else []
    for i, j in sorted(separated):
        if i > j:
            continue
        split = []
        for column in columns:
            if i in column and j in column:
                split += [column - {i}, column - {j}]
            else:
                split.append(column)
        columns = [c for n, c in enumerate(split) if not any(c < o or (c == o and m < n) for m, o in enumerate(split))]
    position = {row: p for p, row in enumerate(order)}
    columns.sort(key=lambda c: sorted(position[r] for r in c))
    names = string.ascii_lowercase + string.ascii_uppercase
    return ["".join(names[c] for c, column in enumerate(columns) if row in column) for row in order]


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


def improvement_interval(
    a: Sequence[float], b: Sequence[float], lower_is_better: bool = True, draws: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile bootstrap interval of the probability of improvement, resampling each side's seeds with
    replacement (Agarwal et al. 2021 report it with stratified bootstrap intervals). With 3 seeds a side the
    statistic moves in steps of 1/18 and the interval is wide: that width is the point."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    x = np.asarray(a, dtype=float)[rng.integers(0, len(a), (draws, len(a)))]
    y = np.asarray(b, dtype=float)[rng.integers(0, len(b), (draws, len(b)))]
    diff = x[:, :, None] - y[:, None, :]
    wins = (diff < 0) if lower_is_better else (diff > 0)
    values = (wins + 0.5 * (diff == 0)).mean(axis=(1, 2))
    low, high = np.quantile(values, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(low), float(high)


def expected_best(scores: Sequence[float], budgets: Sequence[int] | None = None) -> np.ndarray:
    """E[min of k of the B trials drawn without replacement] for each k in `budgets` (default 1…B), lower is better:
    what k fresh trials of the same search would find, unbiased for k ≤ B (draws with replacement would count a
    trial twice and overstate the best). With the scores sorted x₍₁₎ ≤ … ≤ x₍B₎, the best of a random k-subset is
    x₍i₎ with probability C(B−i, k−1) / C(B, k). A failed trial (NaN or ∞) is a trial that found nothing: the
    expectation is over the subsets where at least one trial finished (all k fail with probability C(F, k) / C(B, k),
    F failures), NaN when none did."""
    x = np.sort(np.asarray(scores, dtype=float))
    n = len(x)
    budgets = np.arange(1, n + 1) if budgets is None else np.asarray(budgets)
    finite = np.isfinite(x)
    x = np.where(finite, x, np.inf)
    x.sort()
    m = int(finite.sum())
    if m == 0:
        return np.full(len(budgets), np.nan)
    i = np.arange(1, m + 1)
    out = np.empty(len(budgets))
    for j, k in enumerate(budgets):
        k = int(min(k, n))
        p = special.comb(n - i, k - 1) / special.comb(n, k)
        out[j] = float(np.dot(p, x[:m]) / p.sum())
    return out


def all_fail(scores: Sequence[float], budgets: Sequence[int] | None = None) -> np.ndarray:
    """P(every one of k trials drawn without replacement from the B failed) = C(F, k) / C(B, k), F the failed trials,
    for each k in `budgets` (default 1…B): the chance a search of k trials finds nothing, beside the curve, which is
    conditional on at least one finished trial."""
    x = np.asarray(scores, dtype=float)
    n, failed = len(x), int((~np.isfinite(x)).sum())
    budgets = np.arange(1, n + 1) if budgets is None else np.asarray(budgets)
    return np.array([special.comb(failed, int(k)) / special.comb(n, int(k)) for k in budgets])


def expected_best_band(
    scores: Sequence[float], resamples: int = 2000, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The percentile bootstrap band of `expected_best` over the trials: the B trials resampled with replacement
    `resamples` times, the curve recomputed for each; (low, high) per k = 1…B."""
    x = np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    curves = np.array([expected_best(x[rng.integers(0, len(x), len(x))]) for _ in range(resamples)])
    tail = (1 - confidence) / 2 * 100
    with np.errstate(invalid="ignore"):
        return np.nanpercentile(curves, tail, axis=0), np.nanpercentile(curves, 100 - tail, axis=0)

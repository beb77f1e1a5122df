"""One table across a suite's datasets (torch-free): per model, its mean rank on FID over the suite's tables with a
stratified bootstrap interval over seeds, and its average probability of improvement over the other models, in the
spirit of rliable (Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice").

- Ranks: in each table (dataset × protocol), the models present in every table are ranked by mean FID over their
  seeds (1 = best, ties share the average rank); the mean over tables is the model's mean rank. Ranks need no
  normalisation across datasets whose FIDs live on different scales.
- Interval: a stratified bootstrap over seeds, the seeds of every (table, model) resampled with replacement on
  their own, the ranks and their mean recomputed; the 2.5 and 97.5 percentiles of 2,000 draws. With one seed a
  model's mean is fixed in that table.
- Probability of improvement: P(a seed of A has a lower FID than a seed of B), ties half (the Mann-Whitney
  statistic), averaged over the tables; the table shows each model's average over the other models, and the page's
  matrix every pair.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as scipy_stats

from bench.report import layout, stats
from bench.report.tables import Section

DRAWS = 2000


def common(sections: list[Section]) -> tuple[list[str], list[list[list[float]]]]:
    """The model labels ranked in every table (at least one finite FID each), and their FID seeds: seeds[t][m]."""
    per_table = []
    for s in sections:
        contestants = s.table[~s.table["family"].isin(["real", "published"])]
        per_table.append(
            {
                label: [v for v in seeds if np.isfinite(v)]
                for label, seeds in zip(contestants["label"], s.fid_seeds, strict=True)
            }
        )
    labels = [label for label in per_table[0] if all(per_table[0][label] and t.get(label) for t in per_table)]
    return labels, [[t[label] for label in labels] for t in per_table]


def mean_ranks(seeds: list[list[list[float]]]) -> np.ndarray:
    """Each model's rank by mean FID in each table (ties averaged), averaged over the tables."""
    means = np.array([[np.mean(s) for s in table] for table in seeds])  # tables × models
    return scipy_stats.rankdata(means, axis=1).mean(axis=0)


def rank_interval(seeds: list[list[list[float]]], draws: int = DRAWS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The stratified bootstrap's 95% percentile interval of every model's mean rank."""
    rng = np.random.default_rng(seed)
    ranks = np.zeros((draws, len(seeds[0])))
    for table in seeds:
        means = np.stack(
            [np.asarray(s, dtype=float)[rng.integers(0, len(s), (draws, len(s)))].mean(axis=1) for s in table], axis=1
        )  # draws × models
        ranks += scipy_stats.rankdata(means, axis=1)
    ranks /= len(seeds)
    low, high = np.percentile(ranks, [2.5, 97.5], axis=0)
    return low, high


def improvement(seeds: list[list[list[float]]]) -> np.ndarray:
    """P(A improves on B) averaged over the tables: matrix[a, b], NaN on the diagonal."""
    k = len(seeds[0])
    matrix = np.full((k, k), np.nan)
    for a in range(k):
        for b in range(k):
            if a != b:
                matrix[a, b] = np.mean([stats.probability_of_improvement(t[a], t[b]) for t in seeds])
    return matrix


def table(sections: list[Section]) -> layout.Table | None:
    """The table across datasets; None for a suite of one table or when no model is in every table."""
    if len(sections) < 2:
        return None
    labels, seeds = common(sections)
    if len(labels) < 2:
        return None
    one_each = len({s.dataset for s in sections}) == len(sections)  # else a dataset under two protocols
    names = [s.dataset if one_each else f"{s.dataset} ({s.protocol[:6]})" for s in sections]
    ranks, (low, high), matrix = mean_ranks(seeds), rank_interval(seeds), improvement(seeds)
    per_table = [scipy_stats.rankdata([np.mean(s) for s in t]) for t in seeds]
    columns = [
        layout.Column("model", False, sticky=True),
        layout.Column("tables", True),
        layout.Column("mean rank on FID ↓", True),
        layout.Column("95% interval", False),
        layout.Column("rank per table", False),
        layout.Column("P(improves on another) ↑", True),
    ]
    rows = []
    for i in np.argsort(ranks, kind="stable"):
        places = ", ".join(f"{name} {r[i]:g}" for name, r in zip(names, per_table, strict=True))
        poi = float(np.nanmean(matrix[i]))  # at least two models here
        entries = [
            layout.Entry(labels[i], labels[i]),
            layout.Entry(str(len(sections)), str(len(sections))),
            layout.Entry(f"{ranks[i]:.2f}", repr(float(ranks[i]))),
            layout.Entry(f"[{low[i]:.2f}, {high[i]:.2f}]", repr(float(low[i]))),
            layout.Entry(places, places),
            layout.Entry(f"{poi:.2f}", repr(poi)),
        ]
        rows.append(layout.Row("model", entries))
    spec = layout.Spec("across", "Across datasets", ABOUT, ())
    left_out = sorted(
        {label for s in sections for label in s.table["label"][~s.table["family"].isin(["real", "published"])]}
        - set(labels)
    )
    notes = [NOTE] + ([f"Not in every table, so not aggregated: {', '.join(left_out)}."] if left_out else [])
    pairs = [
        f"{labels[a]} over {labels[b]} {matrix[a, b]:.2f}"
        for a in range(len(labels))
        for b in range(len(labels))
        if a != b
    ]
    notes.append("P(improvement) averaged over the tables, every pair: " + "; ".join(pairs) + ".")
    return layout.Table(spec, spec.title, columns, rows, notes, [])


ABOUT = (
    "Per model, its rank on FID in each table (by mean over seeds), averaged over the tables, with a stratified "
    "bootstrap interval over seeds; models present in every table only."
)
NOTE = (
    "Across datasets (after Agarwal et al. 2021): a model's mean rank on FID over the suite's tables (ties share "
    "the average rank), which needs no normalisation of FIDs that live on different scales; its 95% interval from "
    f"a stratified bootstrap of {DRAWS:,} draws, the seeds of every (table, model) resampled on their own; "
    "P(improves on another) is P(a seed of this model has a lower FID than a seed of another), ties half, averaged "
    "over the tables and over the other models. An interval that includes another model's mean rank means the "
    "seeds cannot order the two across these datasets."
)

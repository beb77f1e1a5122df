"""Leaderboards from the tracking store (reads MLflow through bench.tracking only; never imports torch).

One section per (dataset, protocol fingerprint): numbers from different protocols never share a table. Rows are
models (one per configuration variant), columns are metrics as mean ± sample std over seeds with the seed count;
the best value per column is marked and rows are ranked by FID.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench import schema
from bench.report import notes as words
from bench.report import stats
from bench.schema import PROTOCOL_VERSION, REAL_MODEL

# C_T per √m (m samples a side): a per-sample effect size of copying, computed per run from C_T and m
COPYING_EFFECT = "copying_ct_per_sqrt_m"
METRICS: dict[str, schema.Metric] = {}  # metric key → its column label, direction and decimals
for _key, _metric in schema.LEADERBOARD.items():
    METRICS[_key] = _metric
    if _key == schema.COPYING:
        METRICS[COPYING_EFFECT] = schema.Metric(COPYING_EFFECT, "C_T/√m", None, 3)


@dataclass
class Section:
    dataset: str
    protocol: str
    description: str  # the protocol in words
    table: pd.DataFrame  # one row per (model, variant): model, family, variant, n, seeds, <m>_mean, <m>_std
    notes: list[str]
    runs: pd.DataFrame  # the finished runs behind the table (for figures)
    encoder: str = ""
    fid_seeds: list[list[float]] = field(default_factory=list)  # per-seed FIDs of the ranked rows, in table order
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG path)
    labels: dict[str, str] = field(default_factory=dict)  # column headers of this section that differ from METRICS
    more_notes: dict[str, list[str]] = field(default_factory=dict)  # notes of the further tables, by table key

    def label(self, metric: str) -> str:
        return self.labels.get(metric, METRICS[metric].label)


def latest_finished(runs: pd.DataFrame) -> pd.DataFrame:
    """FINISHED cell runs of the current protocol version, the most recent per bench.cell hash (a re-run after
    deleting a run replaces it)."""
    if runs.empty:
        return runs
    if schema.SWEEP_ROLE in runs:  # a sweep's trials are scored on the validation split only: never a leaderboard row
        runs = runs[runs[schema.SWEEP_ROLE] != "trial"]
    done = runs[(runs["status"] == "FINISHED") & _current(runs)].sort_values("start_time")
    return done.drop_duplicates(schema.CELL, keep="last")


def earlier_protocol(runs: pd.DataFrame) -> int:
    """How many finished runs were evaluated under an earlier protocol version: never shown beside the current
    ones (`bench run` re-runs their cells, whose keys hold the version)."""
    if runs.empty:
        return 0
    return int(((runs["status"] == "FINISHED") & ~_current(runs)).sum())


def _current(runs: pd.DataFrame) -> pd.Series:
    version = runs.get(schema.PROTOCOL_VERSION_TAG, pd.Series("", index=runs.index))
    return version.astype(str) == str(PROTOCOL_VERSION)


CHECKPOINTS = schema.CHECKPOINTS


def build(runs: pd.DataFrame, checkpoint: str = "final", published: tuple = ()) -> list[Section]:
    """Sections of the leaderboard, one per (dataset, protocol fingerprint); `checkpoint` picks the final metrics or
    those of the best checkpoint. `published` (bench.config.Published) add published rows where dataset, metric and
    encoder match."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    runs = latest_finished(runs)
    if runs.empty:
        return []
    return [
        _section(dataset, protocol, group, checkpoint, published)
        for (dataset, protocol), group in runs.groupby([schema.DATASET, schema.PROTOCOL], sort=True)
    ]


def _section(dataset: str, protocol: str, group: pd.DataFrame, checkpoint: str, published: tuple) -> Section:
    """One table: a row per (model, variant) over its seeds, the real-data row first and unranked, models ranked by
    FID with ties, published rows last; the notes that say what the numbers mean."""
    table, fid_seeds = _rows(group, checkpoint)
    notes, more = [], {}
    multi = table["model"].duplicated(keep=False)
    if multi.any():
        notes.append(
            "Models with several configurations in this table are listed once per variant (bench.variant tag), "
            "labelled by the params in which their variants differ; compare all params in the MLflow UI."
        )
    table["label"] = [
        f"{m} ({variant_label(group, m, v)})" if dup else m
        for m, v, dup in zip(table["model"], table["variant"], multi, strict=True)
    ]
    external = table["family"] == "external"
    table.loc[external, "label"] = table.loc[external, "label"] + " (external samples)"
    if external.any():
        notes.append(
            "Rows marked *external samples* are samples made outside genbench, scored by `bench eval` under this "
            "protocol (same features, reference, N and seed): comparable as samples; nothing is known of their "
            "training, and they have no likelihood."
        )
    table["_real"] = table["family"] == "real"
    table = table.sort_values(["_real", "fid_mean"], ascending=[False, True], na_position="last")
    table = table.drop(columns="_real").reset_index(drop=True).copy()  # one block again, before more columns
    real = table["family"] == "real"
    table.insert(0, "rank", ["—" if r else "" for r in real])
    contestants = table[~real]
    keys = list(zip(contestants["model"], contestants["variant"], strict=True))
    samples = [fid_seeds[key][schema.FID] for key in keys]
    order = stats.ranking(samples)
    table.insert(1, "group", "")
    table.loc[~real, "rank"] = order.rank
    table.loc[~real, "group"] = order.letters
    best = {}  # bold: every model no other model beats on each metric (Holm-adjusted, as the ranks)
    for m in METRICS:
        best[f"{m}_best"] = pd.Series(False, index=table.index)
        if METRICS[m].higher_is_better is not None and len(contestants):
            best[f"{m}_best"][~real] = _tied_best([fid_seeds[key][m] for key in keys], METRICS[m])
    table = pd.concat([table, pd.DataFrame(best)], axis=1)
    if len(contestants):
        notes.append(words.uncertainty(contestants["n"], order.pairs))
    more["samples"] = words.sample_notes(group)
    counts = _counts(group)
    if real.any():
        notes.append(_real_row(table, real, counts))
    if group.get(f"metrics.{schema.NLL_AIS}", pd.Series(dtype=float)).notna().any():
        more["ais"] = [words.AIS_NOTE]
    if group.get(f"metrics.{schema.AIS_OWN_GAP}", pd.Series(dtype=float)).notna().any():
        more["vae"] = [words.OWN_MODEL_NOTE]
        checks = group.get(schema.AIS_CHECK, pd.Series(dtype=str)).fillna("")
        for _, run in group[checks.str.startswith("violated")].iterrows():
            more["vae"].append(f"⚠ {run[schema.MODEL]} seed {run[schema.SEED]}: {run[schema.AIS_CHECK]}")
    if (table["family"] == "vae").any():
        notes.append(
            "VAE samples are the decoder's mean images at z ~ N(0, I), not draws from the observation model p(x|z) "
            "(binary or 8-bit noise on top), as VAE papers show them: the sample metrics of VAEs score those means."
        )
    if checkpoint == "best" and (group.get("params.eval.best_metrics", pd.Series(dtype=str)) == "sample").any():
        notes.append(
            'The best checkpoint is scored on its sample metrics only (eval.best_metrics = "sample"): its likelihood '
            'columns stay empty. eval.best_metrics = "all" scores its likelihoods too, at the cost of IWAE and AIS '
            "again."
        )
    cost = words.cost(group, table)
    if cost:
        notes.append(cost)
    encoder = str(group.iloc[-1].get("params.eval.encoder", ""))
    shown = [r for r in published if r.dataset == dataset and r.encoder in ("", encoder) and r.metric in METRICS]
    if shown:
        table = pd.concat([table, _published_rows(shown)], ignore_index=True)
        notes.append(
            "Rows marked *published* are numbers from papers, measured under their own protocols (below); "
            "they are never ranked with genbench's rows:"
        )
        notes += [f"[{i}] {r.model}: {r.citation} — {r.protocol}" for i, r in enumerate(shown, 1)]
    description = _describe(group.iloc[-1], counts)
    labels = _labels(group, counts)
    section = Section(dataset, protocol, description, table, notes, group, encoder, samples, labels=labels)
    section.more_notes = more
    return section


def _rows(group: pd.DataFrame, checkpoint: str) -> tuple[pd.DataFrame, dict]:
    """A row per (model, variant): every metric's count, mean, std and 95% t interval over its seeds; and the
    per-seed values of each metric, by (model, variant) (the ranks, the tied-best marks, the probability of
    improvement)."""
    rows, fid_seeds = [], {}
    for (model, variant), cell_runs in group.groupby([schema.MODEL, schema.VARIANT], sort=True):
        row = {
            "model": model,
            "best_steps": _steps(cell_runs) if checkpoint == "best" else "",
            "family": cell_runs[schema.FAMILY].iloc[0],
            "variant": variant,
            "n": len(cell_runs),
            "seeds": ",".join(sorted(cell_runs[schema.SEED].astype(str))),
        }
        # the real-data row has no checkpoints: the same numbers under either choice
        prefix = schema.BEST_PREFIX if checkpoint == "best" and model != REAL_MODEL else ""
        for m in METRICS:
            values = pd.to_numeric(_metric(cell_runs, prefix, m), errors="coerce").dropna()
            row[f"{m}_n"] = len(values)  # the values behind this mean: a run that lacks the metric does not count
            row[f"{m}_mean"] = values.mean() if len(values) else math.nan
            row[f"{m}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = stats.t_interval(list(values)) or (math.nan, math.nan)
            fid_seeds.setdefault((model, variant), {})[m] = list(values)
        rows.append(row)
    return pd.DataFrame(rows), fid_seeds


def _metric(runs: pd.DataFrame, prefix: str, m: str) -> pd.Series:
    """A metric's values over runs (NaN where a run lacks it); C_T/√m derived from C_T and its sample count m."""
    if m == COPYING_EFFECT:
        copying = pd.to_numeric(_metric(runs, prefix, schema.COPYING), errors="coerce")
        samples = pd.to_numeric(_metric(runs, prefix, schema.COPYING_SAMPLES), errors="coerce")
        return copying / samples.where(samples > 0) ** 0.5
    return runs.get(f"metrics.{prefix}{m}", pd.Series(math.nan, index=runs.index))


def _tied_best(samples: list[list[float]], metric: schema.Metric) -> list[bool]:
    """The rows tied for best on a metric; none at all when an untestable row (n < 2) has a better mean than every
    testable one: then no claim about the best can be made."""
    tied = stats.ranking(samples, not metric.higher_is_better).tied_best
    sign = -1.0 if metric.higher_is_better else 1.0
    means = [sign * sum(s) / len(s) if s else math.inf for s in samples]
    best_tested = min((mean for mean, s in zip(means, samples, strict=True) if len(s) >= 2), default=math.inf)
    if any(mean < best_tested for mean, s in zip(means, samples, strict=True) if len(s) == 1):
        return [False] * len(samples)
    return tied


# params that differ between the seeds of one variant, or are not config at all (cell.model, cell.seed, ...)
_NOT_VARIANT = ("params.cell.",)


def variant_label(group: pd.DataFrame, model: str, variant: str, most: int = 3) -> str:
    """What sets this variant apart from the model's other variants in `group`: the params whose values differ
    among them, as `key=value` (at most `most`, then "+N more"); the variant hash's first 8 characters when no
    param differs."""
    runs = group[group[schema.MODEL] == model]
    first = runs.drop_duplicates(schema.VARIANT).set_index(schema.VARIANT)
    keys = [c for c in first.columns if c.startswith("params.") and not c.startswith(_NOT_VARIANT)]
    values = first[keys].astype(str)  # NaN (a param one variant lacks) reads "nan"
    differ = [k for k in keys if values[k].nunique() > 1]
    if not differ:
        return variant[:8]
    parts = [f"{k.removeprefix('params.')}={values.at[variant, k]}" for k in sorted(differ)]
    return ", ".join(parts[:most]) + (f", +{len(parts) - most} more" if len(parts) > most else "")


def _counts(group: pd.DataFrame) -> dict[str, int | None]:
    """The sample counts behind a section's sample metrics (logged by every evaluation); None where a section has
    no such row (no real-data row, say)."""

    def one(key: str, family_is_real: bool) -> int | None:
        rows = group[(group[schema.FAMILY] == "real") == family_is_real]
        values = pd.to_numeric(rows.get(f"metrics.{key}", pd.Series(dtype=float)), errors="coerce").dropna()
        return int(values.iloc[-1]) if len(values) else None

    return {
        "generated": one(schema.GENERATED_IMAGES, False),
        "reference": one(schema.REFERENCE_IMAGES, False) or one(schema.REFERENCE_IMAGES, True),
        "real_row": one(schema.GENERATED_IMAGES, True),
    }


def _real_row(table: pd.DataFrame, real: pd.Series, counts: dict) -> str:
    """Label the real-data row by what it is at this N, blank the numbers it cannot be compared on, and say so."""
    n, models = counts["real_row"], counts["generated"]
    if n is None or models is None or n == models:
        table.loc[real, "label"] = "real data (held-out split, same N: the floor)"
        return (
            "The real-data row scores held-out real images against the reference split at the models' N: its FID is "
            "the floor a perfect model reaches at this sample count, its IS the real data's. It is not ranked."
        )
    table.loc[real, "label"] = f"real data (held-out split, N = {n:,})"
    for m in METRICS:
        if schema.base_metric(m) not in schema.SAMPLE_COUNT_FREE:
            table.loc[real, [f"{m}_mean", f"{m}_std", f"{m}_ci_low", f"{m}_ci_high"]] = math.nan
    return (
        f"The held-out split has only {n:,} images, fewer than the models' {models:,} samples, so the real-data row is "
        f"not a floor for FID, IS or precision/recall at N = {models:,} and is not shown there (the bias of FID "
        f"grows as 1/N). It is shown where N cancels: FID at N = {n:,} (the models scored on {n:,} of their "
        "samples), FID∞ (extrapolated to infinite N) and KID (unbiased). It is not ranked."
    )


def _labels(group: pd.DataFrame, counts: dict) -> dict[str, str]:
    labels = {}
    if counts["real_row"] is not None and counts["generated"] and counts["real_row"] < counts["generated"]:
        labels[schema.FID_MATCHED] = f"FID at N = {counts['real_row']:,} ↓"
    observation = set(group.get(schema.OBSERVATION, pd.Series(dtype=str)).dropna())
    if observation == {"bernoulli"}:
        labels[schema.BITS_PER_DIM] = "bits/dim (binary pixels) ↓"
    elif observation == {"discretized-logistic"}:
        labels[schema.BITS_PER_DIM] = "bits/dim (8-bit) ↓"
    return labels


def _published_rows(published: list) -> pd.DataFrame:
    rows = []
    for i, r in enumerate(published, 1):
        row = {"rank": "—", "model": r.model, "family": "published", "variant": "", "n": "", "seeds": ""}
        row["label"] = f"published: {r.model} [{i}]"
        row["best_steps"] = ""
        for m in METRICS:
            row[f"{m}_mean"] = r.value if m == r.metric else math.nan
            row[f"{m}_std"] = (r.std if r.std is not None else math.nan) if m == r.metric else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _steps(cell_runs: pd.DataFrame) -> str:
    steps = pd.to_numeric(cell_runs.get("metrics.best/step", pd.Series(dtype=float)), errors="coerce").dropna()
    return ",".join(str(int(s)) for s in steps)


def _describe(run: pd.Series, counts: dict) -> str:
    def p(key: str) -> str:
        return str(run.get(f"params.{key}", "?"))

    generated, reference, split = counts["generated"], counts["reference"], p("eval.reference_split")
    if generated and reference:
        n = f"N = {generated:,} generated images vs the {reference:,} images of the `{split}` split"
        n += f"; precision/recall on {min(generated, reference):,} of each"
    else:  # a table of real-data and external rows only
        n = f"{p('eval.num_samples')} generated images vs the `{split}` split"
    return (
        f"encoder `{p('eval.encoder')}`; sample metrics of {n}; "
        f"IWAE k = {p('eval.iwae_k')} on the test split; eval seed {p('eval.seed')}"
        + (
            f"; AIS on {p('eval.ais.images')} test images, {p('eval.ais.chains')} chains, {p('eval.ais.steps')} "
            f"{p('eval.ais.schedule')}-scheduled distributions, {p('eval.ais.leapfrog')} leapfrog steps"
            if p("eval.ais.images") not in ("?", "0")
            else ""
        )
    )

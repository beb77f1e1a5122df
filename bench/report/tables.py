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
from bench.report import stats
from bench.schema import PROTOCOL_VERSION, REAL_MODEL

METRICS = schema.LEADERBOARD  # metric key → its column label, direction and decimals


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
    notes = []
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
        notes.append(_uncertainty_note(contestants["n"], order.pairs))
    notes += _metric_notes(group)
    counts = _counts(group)
    if real.any():
        notes.append(_real_row(table, real, counts))
    if group.get(f"metrics.{schema.NLL_AIS}", pd.Series(dtype=float)).notna().any():
        notes.append(AIS_NOTE)
    if group.get(f"metrics.{schema.AIS_OWN_GAP}", pd.Series(dtype=float)).notna().any():
        notes.append(OWN_MODEL_NOTE)
        checks = group.get(schema.AIS_CHECK, pd.Series(dtype=str)).fillna("")
        for _, run in group[checks.str.startswith("violated")].iterrows():
            notes.append(f"⚠ {run[schema.MODEL]} seed {run[schema.SEED]}: {run[schema.AIS_CHECK]}")
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
    cost = _cost_note(group, table)
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
    return Section(dataset, protocol, description, table, notes, group, encoder, samples, labels=labels)


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
            column = cell_runs.get(f"metrics.{prefix}{m}", pd.Series(dtype=float))
            values = pd.to_numeric(column, errors="coerce").dropna()
            row[f"{m}_n"] = len(values)  # the values behind this mean: a run that lacks the metric does not count
            row[f"{m}_mean"] = values.mean() if len(values) else math.nan
            row[f"{m}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = stats.t_interval(list(values)) or (math.nan, math.nan)
            fid_seeds.setdefault((model, variant), {})[m] = list(values)
        rows.append(row)
    return pd.DataFrame(rows), fid_seeds


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


def _cost_note(group: pd.DataFrame, table: pd.DataFrame) -> str:
    """What a cell of each model costs, mean over its seeds: training, and evaluation (the final checkpoint's, the
    best one's, and AIS within them): what a bigger suite of the same models will cost."""
    parts = []
    for _, row in table[table["family"].isin(["gan", "vae"])].iterrows():
        runs = group[(group[schema.MODEL] == row["model"]) & (group[schema.VARIANT] == row["variant"])]
        spent = {part: _mean_of_sum(runs, *keys) for part, keys in schema.COST.items()}
        parts.append(f"{row['label']}: {schema.cost_text(spent)}")
    if not parts:
        return ""
    return "Time per cell, mean over seeds (final and best evaluation together): " + "; ".join(parts) + "."


def _mean_of_sum(runs: pd.DataFrame, *keys: str) -> float:
    """The mean over runs of the sum of metrics `keys` (a metric a run lacks counts 0)."""
    zero = pd.Series(0.0, index=runs.index)
    total = sum(pd.to_numeric(runs.get(f"metrics.{k}", zero), errors="coerce").fillna(0.0) for k in keys)
    return float(total.mean())


AIS_NOTE = (
    "8-bit code length (AIS): −log P(x) of the 8-bit test images, in nats per image, for GANs and VAEs alike, by "
    "annealed importance sampling (Wu et al. 2017) over the model's latent space, under one observation model for "
    "both families: a Gaussian N(f(z), σ²) around the decoder's mean image, discretised onto the 256 pixel values "
    "(σ chosen per model on held-out test images, shown as AIS σ). It is a probability, so the number is ≥ 0 and "
    "bits per 8-bit pixel is a code length. AIS bounds log P(x) from below (stochastically), so the code length is an "
    "upper bound; the BDMC gap (upper − lower bound on data simulated from the model) says how loose it can be. It "
    "is not the VAEs' own likelihood: NLL (IWAE) scores binarised (or 8-bit logistic) images under each VAE's own "
    "decoder, a different quantity. The continuous Gaussian density of Wu et al.'s tables is not shown: on 8-bit data "
    "it grows without bound as σ → 0 (Theis et al. 2016)."
)
OWN_MODEL_NOTE = (
    "VAE check: each VAE is also scored by AIS under its own observation model on the same test images as its IWAE "
    "bound; AIS − IWAE (nats per image) must not be negative beyond Monte-Carlo error (AIS is the tighter "
    "estimate). Every run checks it and tags a violation (bench.ais_check)."
)


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


def _metric_notes(group: pd.DataFrame) -> list[str]:
    """One sentence per encoder and per newer metric shown in this table."""
    present = {c.removeprefix("metrics.") for c in group.columns if c.startswith("metrics.") and group[c].notna().any()}
    notes = []
    first = str(group.iloc[-1].get("params.eval.encoder", ""))
    extras = [e for e in schema.ENCODERS if e != first and schema.encoder_key(schema.FID, e) in present]
    if extras:
        notes.append(
            f"Encoders: every sample metric is computed in each encoder's features from the same samples; the "
            f"first encoder (`{first}`) has the plain columns, the others are marked [name]. "
            + "; ".join(schema.ENCODERS[e].note for e in (first, *extras) if e in schema.ENCODERS)
            + ". Fréchet distances (FD) in different encoders are different quantities: compare within a column."
        )
    if schema.FID_INF in present:
        notes.append(
            "FID∞ (Chong & Forsyth 2020): FID extrapolated to infinitely many samples by a least-squares line of FID "
            "against 1/N over random subsets; 'FID∞ fit SE' is the intercept's standard error from the scatter of "
            "those subset draws (per seed; ± is still the spread over seeds). An extrapolation, not a distance: it "
            "can fall below 0. The real-data row shows it only where its N is at least "
            f"{schema.FID_INF_REAL_MIN_RATIO} × the feature dimension; below that the fit is biased and noisy."
        )
    if schema.DENSITY in present:
        notes.append(
            "Density and coverage (Naeem et al. 2020, k = 5 nearest neighbours among the real features only): density "
            "is how many real neighbourhoods a sample falls in, relative to k (≈ 1 when the distributions match, above "
            "1 when samples crowd where real data is dense); coverage is the share of real neighbourhoods that hold a "
            "sample (diversity). Unlike precision/recall they do not inflate with outliers among the samples."
        )
    if schema.COPYING in present:
        notes.append(
            "Copying C_T (Meehan et al. 2020, as their code computes it): in k-means cells of the training features, "
            "the Mann-Whitney z-score (with their continuity correction) of the samples' distances to their nearest "
            "training image within the cell against the test images' distances, averaged over the cells holding "
            "more than 20 samples, weighted by their share of test images; equally many samples and test images "
            "(the larger side subsampled), so the authors' threshold of −3 means one thing in every table. Far below "
            "0 means samples sit closer to the training set than unseen real data does: memorisation, which FID "
            "rewards; near 0 is healthy; above 0 is underfitting."
        )
    return notes


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


def _uncertainty_note(n: pd.Series, pairs: int) -> str:
    if (n < 2).all():
        return (
            "n = 1 seed per model: no confidence intervals and no significance tests, so no model is ranked and none "
            "is marked best. Run more seeds (seeds = [0, 1, 2, 3, 4]) to separate models."
        )
    return (
        "± is the sample standard deviation over seeds; [low, high] the 95% Student-t confidence interval of the "
        "mean over seeds (n − 1 degrees of freedom); a value's own count follows it as (n = k) where a run lacks "
        f"that metric. Ranks and groups on FID: each of the {pairs} pair(s) of models with n ≥ 2 seeds is compared "
        "by two-sided t-tests (Welch's and Student's must both reject), Holm-adjusted over all pairs, so that two "
        f"identical models are told apart in at most {stats.ALPHA:.0%} of tables whatever the number of models and "
        "seeds. A rank is the range of places the tests "
        'allow ("1–3": first to third); models that share a group letter are not separated. A shared letter or '
        'rank means "not separated at these n seeds", not "equal". **Bold** marks, per column, every model that no '
        "other model beats by the same tests (all tied for best). Rows with a single seed or sample set cannot be "
        f"tested: they are shown with rank {stats.UNRANKED}, never grouped or bold."
    )


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


def value_text(row: pd.Series, metric: str) -> str:
    """A table cell: mean ± std with the metric's decimals; published numbers exactly as the paper gives them."""
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if row["family"] == "published":
        if pd.isna(mean):
            return ""
        return f"{mean:g}" if pd.isna(std) else f"{mean:g} ± {std:g}"
    low, high = row.get(f"{metric}_ci_low", math.nan), row.get(f"{metric}_ci_high", math.nan)
    text = _cell(mean, std, METRICS[metric].decimals, low, high)
    count = row.get(f"{metric}_n")
    if text and count is not None and not pd.isna(count) and str(int(count)) != str(row["n"]):
        text += f" (n = {int(count)})"
    return text


def _cell(mean: float, std: float, decimals: int, low: float = math.nan, high: float = math.nan) -> str:
    if math.isnan(mean):
        return ""
    text = f"{mean:.{decimals}f}" if math.isnan(std) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    return text if math.isnan(low) else f"{text} [{low:.{decimals}f}, {high:.{decimals}f}]"

"""The notes under a leaderboard's tables: what each number means, in words (torch-free)."""

from __future__ import annotations

import pandas as pd

from bench import schema
from bench.report import stats


def sample_notes(group: pd.DataFrame) -> list[str]:
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
            "those subset draws (per seed; ± is still the spread over seeds). That SE leaves out the noise of the "
            "generated pool itself: ±1.96 SE held a known FID∞ in about 90% of simulated pools, not 95% "
            "(docs/protocol.md). An extrapolation, not a distance: it "
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
            "(m a side, the larger side subsampled). Far below 0 means samples sit closer to the training set than "
            "unseen real data does: memorisation, which FID rewards; near 0 is healthy; above 0 is underfitting. C_T "
            "is a z-score: for one model it grows like √m, so the authors' threshold of −3 flags smaller effects at "
            "larger m and compares only tables of one m. C_T/√m beside it is a per-sample effect size that does not "
            "grow with m: compare that across suites."
        )
    return notes


def uncertainty(n: pd.Series, pairs: int) -> str:
    if (n < 2).all():
        return (
            "n = 1 seed per model: no confidence intervals and no significance tests, so no model is ranked and none "
            "is marked best. Run more seeds (seeds = [0, 1, 2, 3, 4]) to separate models."
        )
    return (
        f"Ranks and groups on FID: each of the {pairs} pair(s) of models with n ≥ 2 seeds is compared by two-sided "
        "t-tests (Welch's and Student's must both reject), Holm-adjusted over all pairs, so that two identical "
        f"models are told apart in at most {stats.ALPHA:.0%} of tables whatever the number of models and seeds. A "
        'rank is the range of places the tests allow ("1–3": first to third); models that share a group letter are '
        'not separated. A shared letter or rank means "not separated at these n seeds", not "equal". **Bold** '
        "marks, per column, every model that no other model beats by the same tests (all tied for best). ± is the "
        "sample standard deviation over seeds; the 95% Student-t intervals of the means (n − 1 degrees of freedom) "
        "are in the table of intervals (and on hover in the HTML page); a value's own count follows it as (n = k) "
        "where a run lacks that metric. Rows with a single seed or sample set cannot be "
        f"tested: they are shown with rank {stats.UNRANKED}, never grouped or bold."
    )


def cost(group: pd.DataFrame, table: pd.DataFrame) -> str:
    """What a cell of each model costs, mean over its seeds: training, and evaluation (the final checkpoint's, the
    best one's, and AIS within them): what a bigger suite of the same models will cost."""
    parts = []
    for _, row in table[table["family"].isin(["gan", "vae"])].iterrows():
        runs = group[(group[schema.MODEL] == row["model"]) & (group[schema.VARIANT] == row["variant"])]
        spent = {part: mean_of_sum(runs, *keys) for part, keys in schema.COST.items()}
        parts.append(f"{row['label']}: {schema.cost_text(spent)}")
    if not parts:
        return ""
    return "Time per cell, mean over seeds (final and best evaluation together): " + "; ".join(parts) + "."


def mean_of_sum(runs: pd.DataFrame, *keys: str) -> float:
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

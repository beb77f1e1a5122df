"""Sample-quality metrics on encoder features: FID, IS and precision/recall with torch-fidelity's metric functions, KID
on torch-fidelity's subsets with every kernel value computed once, density/coverage, FID∞ and C_T.

Layered as in torch-fidelity: features → statistics → metric. Inputs are the dicts an Encoder returns:
{"features": (N, d) float64, "logits": (N, K)}; "generated" first, "real" second, as torch-fidelity expects.
"""

from __future__ import annotations

import math

import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from bench.config import EvalConfig
from bench.schema import (
    COVERAGE,
    DENSITY,
    FID,
    FID_INF,
    FID_INF_SE,
    IS_MEAN,
    IS_STD,
    KID_MEAN,
    KID_STD,
    PRECISION,
    RECALL,
)

FID_TOLERANCE = 1e-6  # |FID| below this is numerically zero: identical statistics, or a failed square root

# The sample metrics one can ask for (`bench eval --metrics`, `bench.evaluate(metrics=)`), each with the keys it
# gives; torch-fidelity's flag names (isc, prc) are accepted too.
METRICS = {
    "fid": (FID,),
    "fid_inf": (FID_INF, FID_INF_SE),
    "is": (IS_MEAN, IS_STD),
    "kid": (KID_MEAN, KID_STD),
    "prc": (PRECISION, RECALL),
    "dc": (DENSITY, COVERAGE),
}
METRIC_ALIASES = {"isc": "is", "precision": "prc", "recall": "prc", "density": "dc", "coverage": "dc"}


def metric_groups(names) -> frozenset[str] | None:
    """The metric groups (METRICS keys) for names as a user gives them ("fid,kid", ["fid", "isc"]); None for all.
    An unknown name is a MetricError that lists the known ones, before any work is done."""
    if names is None:
        return None
    if isinstance(names, str):
        names = names.split(",")
    out = set()
    for name in (n.strip().lower() for n in names):
        if not name:
            continue
        group = METRIC_ALIASES.get(name, name)
        if group not in METRICS:
            known = ", ".join([*METRICS, *METRIC_ALIASES])
            raise MetricError(f"unknown metric {name!r}: choose from {known}")
        out.add(group)
    if not out:
        raise MetricError(f"no metric named: choose from {', '.join(METRICS)}")
    return frozenset(out)


class MetricError(RuntimeError):
    """A metric cannot be computed meaningfully from these features; the message says why."""


def fid(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017)."""
    stats_gen, stats_real = fid_features_to_statistics(generated.double()), fid_features_to_statistics(real.double())
    return fid_statistics_to_metric(stats_gen, stats_real, verbose=False)["frechet_inception_distance"]


FID_INF_POINTS = 10  # FIDs at sample counts evenly spaced in 1/N (Chong & Forsyth 2020 fit 15 from 5k to 50k)
FID_INF_MIN_FRACTION = 0.2  # the smallest count: a fifth of the samples (and more than twice the feature dimension)


def fid_infinity(generated: torch.Tensor, real: torch.Tensor, seed: int = 0) -> tuple[float, float] | None:
    """FID extrapolated to infinitely many generated samples (Chong & Forsyth 2020, "Effectively Unbiased FID and
    Inception Score and where to find them"): FID of random subsets of the generated features at FID_INF_POINTS
    counts N evenly spaced in 1/N, from FID_INF_MIN_FRACTION of them up to all of them, against the whole real set;
    a least-squares line in 1/N; its intercept, with the intercept's standard error from the scatter of the subset
    draws about the line (√(σ̂² (1/k + x̄²/Sxx)), σ̂² the residual variance on k − 2 degrees of freedom). FID's bias
    grows roughly as 1/N, so the intercept does not depend on the sample count; it can fall below 0 (a
    extrapolation, not a distance). None when there are too few samples for the smallest subset to exceed 2× the
    dimension."""
    n, dim = generated.shape
    n_min = max(int(n * FID_INF_MIN_FRACTION), 2 * dim + 1)
    if n_min >= n:
        return None
    steps = torch.linspace(1 / n_min, 1 / n, FID_INF_POINTS, dtype=torch.float64).tolist()
    counts = sorted({round(1 / x) for x in steps})
    stats_real = fid_features_to_statistics(real.double())
    g = torch.Generator().manual_seed(seed)
    inverse, values = [], []
    for count in counts:
        subset = generated[torch.randperm(n, generator=g)[:count]].double()
        stats = fid_features_to_statistics(subset)
        values.append(fid_statistics_to_metric(stats, stats_real, verbose=False)["frechet_inception_distance"])
        inverse.append(1.0 / count)
    x, y = torch.tensor(inverse, dtype=torch.float64), torch.tensor(values, dtype=torch.float64)
    sxx = ((x - x.mean()) ** 2).sum()
    slope = ((x - x.mean()) * (y - y.mean())).sum() / sxx
    intercept = y.mean() - slope * x.mean()
    k = len(x)
    if k < 3:
        return float(intercept), math.nan
    residual = ((y - intercept - slope * x) ** 2).sum() / (k - 2)
    return float(intercept), float(torch.sqrt(residual * (1 / k + x.mean() ** 2 / sxx)))


def inception_score(logits: torch.Tensor, splits: int, seed: int) -> tuple[float, float]:
    """exp E_x KL(p(y|x) || p(y)) over `splits` chunks (Salimans et al. 2016): mean and std over chunks."""
    out = isc_features_to_metric(logits.double(), splits=splits, shuffle=True, rng_seed=seed)
    return out["inception_score_mean"], out["inception_score_std"]


KID_SUBSETS_AT_ONCE = 10  # subsets whose three kernel matrices are built in one batched product (memory, not math)
KID_GRAM_MAX_ENTRIES = 2**25  # at most this many kernel values (256 MB of float64): every pair's kernel computed once


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x·y / d + 1)³ between the rows of a (…, n, d) and b (…, m, d), float64."""
    return (a @ b.transpose(-1, -2) / a.shape[-1] + 1.0) ** 3


def kid(generated: torch.Tensor, real: torch.Tensor, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """Unbiased MMD² with the cubic polynomial kernel k(x, y) = (x·y / d + 1)³ (Bińkowski et al. 2018) over random
    subsets: mean and population standard deviation over the subsets. For m images per side:
    (Σ_{i≠j} k(x_i, x_j) + Σ_{i≠j} k(y_i, y_j)) / (m(m − 1)) − 2 Σ_{i,j} k(x_i, y_j) / m².

    The subsets are torch-fidelity's (a numpy RandomState(seed), each subset drawing `subset_size` generated then
    real indices without replacement), so the numbers are its numbers up to float64 summation order. The kernel
    sums are computed once per pair: when all kernel values fit KID_GRAM_MAX_ENTRIES (the subsets overlap, so
    computing them per subset repeats most of them), each subset's block sum is 1ₛᵀ K 1ₛ of the full kernel
    matrices with the subsets' indicator vectors; otherwise the subsets' kernels are built KID_SUBSETS_AT_ONCE at a
    time in batched products."""
    import numpy as np

    n_gen, n_real = len(generated), len(real)
    if min(n_gen, n_real) < subset_size:
        raise MetricError(f"KID subsets of {subset_size} need as many images: {n_gen} generated, {n_real} real")
    rng = np.random.RandomState(seed)
    picks = [(rng.choice(n_gen, subset_size, replace=False), rng.choice(n_real, subset_size, replace=False))
             for _ in range(subsets)]  # fmt: skip
    x_all, y_all = generated.double().cpu(), real.double().cpu()
    gen_idx = torch.from_numpy(np.stack([p[0] for p in picks]))  # (S, m)
    real_idx = torch.from_numpy(np.stack([p[1] for p in picks]))
    m = subset_size
    if n_gen * n_gen + n_real * n_real + n_gen * n_real <= KID_GRAM_MAX_ENTRIES:
        in_gen = torch.zeros(subsets, n_gen, dtype=torch.float64).scatter_(1, gen_idx, 1.0)  # (S, n) indicators
        in_real = torch.zeros(subsets, n_real, dtype=torch.float64).scatter_(1, real_idx, 1.0)

        def block_sums(k: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
            return ((left @ k) * right).sum(1)  # (S,): Σ_{i ∈ left's subset, j ∈ right's} k_ij

        k_xx, k_yy, k_xy = _poly_kernel(x_all, x_all), _poly_kernel(y_all, y_all), _poly_kernel(x_all, y_all)
        xx = block_sums(k_xx, in_gen, in_gen) - in_gen @ k_xx.diagonal()
        yy = block_sums(k_yy, in_real, in_real) - in_real @ k_yy.diagonal()
        mmd = (xx + yy) / (m * (m - 1)) - 2 * block_sums(k_xy, in_gen, in_real) / (m * m)
    else:
        values = []
        for start in range(0, subsets, KID_SUBSETS_AT_ONCE):
            x = x_all[gen_idx[start : start + KID_SUBSETS_AT_ONCE]]  # (s, m, d)
            y = y_all[real_idx[start : start + KID_SUBSETS_AT_ONCE]]
            k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
            xx = k_xx.sum((1, 2)) - k_xx.diagonal(dim1=1, dim2=2).sum(1)
            yy = k_yy.sum((1, 2)) - k_yy.diagonal(dim1=1, dim2=2).sum(1)
            values.append((xx + yy) / (m * (m - 1)) - 2 * k_xy.sum((1, 2)) / (m * m))
        mmd = torch.cat(values)
    return mmd.mean().item(), mmd.std(correction=0).item()


def precision_recall(
    generated: torch.Tensor, real: torch.Tensor, neighborhood: int, seed: int = 0
) -> tuple[float, float]:
    """Improved precision and recall with k-NN balls (Kynkäänniemi et al. 2019), on equally many real and generated
    images as in the paper: the larger side is subsampled to the smaller one (without replacement, seeded). Equal
    sizes keep the k-NN radii comparable between the two sets (a k-NN ball shrinks as its set grows), and memory at
    O(n²) of the smaller count."""
    n = min(len(real), len(generated))
    if len(real) > n:
        real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:n]]
    if len(generated) > n:
        generated = generated[torch.randperm(len(generated), generator=torch.Generator().manual_seed(seed))[:n]]
    out = prc_features_to_metric(
        generated, real, prc_neighborhood=neighborhood, prc_batch_size=5000, save_cpu_ram=True, verbose=False
    )
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


def pairwise_distances(a: torch.Tensor, b: torch.Tensor, reduce=None, chunk: int = 2048) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) in float64, in row chunks (memory, not math). `reduce`, applied to each
    chunk's (rows, len(b)) distances, keeps only what is needed per row (a minimum, an index), so the whole matrix
    never exists: 10,000 × 60,000 distances would be 4.8 GB."""
    b = b.double()
    chunks = (torch.cdist(a[i : i + chunk].double(), b) for i in range(0, len(a), chunk))
    return torch.cat([d if reduce is None else reduce(d) for d in chunks])


def nearest_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each row of a's Euclidean distance to its nearest row of b, (len(a),) float64."""
    return pairwise_distances(a, b, lambda d: d.min(1).values)


def nearest_centre(a: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The index of each row of a's nearest centre, (len(a),)."""
    return pairwise_distances(a, centres, lambda d: d.argmin(1))


def _kth_neighbour(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of x to its k-th nearest other row (the radius of its k-NN ball), (N,)."""
    return pairwise_distances(x, x, lambda d: d.kthvalue(k + 1, dim=1).values)  # the 1st smallest: the row itself


def density_coverage(generated: torch.Tensor, real: torch.Tensor, k: int = 5, seed: int = 0) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models"),
    with k-NN balls around the real features only, which makes them robust to outliers among the real ones:
    density = mean over generated samples of (number of real balls containing it) / k, ≈ 1 when the two
    distributions match and unbounded above; coverage = share of real balls that contain at least one generated
    sample, in [0, 1]. Equal counts on both sides, as for precision/recall (the larger side subsampled, seeded)."""
    n = min(len(real), len(generated))
    if len(real) > n:
        real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:n]]
    if len(generated) > n:
        generated = generated[torch.randperm(len(generated), generator=torch.Generator().manual_seed(seed))[:n]]
    radii = _kth_neighbour(real, k)  # (n,)
    inside = (
        pairwise_distances(real, generated) < radii[:, None]
    )  # (real, generated): generated j in the ball of real i
    density = inside.sum(0).double().mean().item() / k
    coverage = inside.any(1).double().mean().item()
    return density, coverage


def check_counts(generated: int, real: int, dim: int, encoder: str = "") -> None:
    """FID fits a d-dimensional Gaussian to each side: with no more images than feature dimensions it is undefined.
    The one place this rule lives: the suite checks it before training, the evaluation again on the features."""
    if min(generated, real) <= dim:
        where = f" of the {encoder} encoder" if encoder else ""
        raise MetricError(
            f"FID needs more images than feature dimensions: {generated} generated and {real} real images for the "
            f"{dim}-d features{where}; raise eval.num_samples above {dim}, use a larger reference split, or another "
            "encoder"
        )


def sample_metrics(
    generated: dict[str, torch.Tensor],
    real: dict[str, torch.Tensor],
    cfg: EvalConfig,
    which: frozenset[str] | None = None,
    *,
    small_n: bool = False,
    copies: bool = False,
) -> dict:
    """The sample-quality metrics of one evaluation (all, or the METRICS groups in `which`), by their MLflow names,
    behind the sanity gates: too few samples for the feature dimension (unless `small_n`: asked for, and said in the
    protocol), non-finite features or metrics, a negative or numerically zero FID (unless `copies`: the samples are
    the reference images, as in a sanity check) each raise MetricError (the cell is recorded FAILED) instead of
    producing a number."""
    if not small_n and (which is None or which & {"fid", "fid_inf"}):
        check_counts(len(generated["features"]), len(real["features"]), generated["features"].shape[1])
    for side, feats in (("generated", generated), ("reference", real)):
        for key, value in feats.items():
            if not torch.isfinite(value).all():
                raise MetricError(
                    f"the {side} {key} contain NaN or infinite values: the images or the encoder "
                    "are degenerate; not reported"
                )
    out = compute(generated, real, cfg, which)
    bad = {k: v for k, v in out.items() if not math.isfinite(v)}
    if bad:
        raise MetricError(f"non-finite metric values {bad}: the samples or features are degenerate")
    if FID not in out or copies:
        return out
    if out[FID] < -FID_TOLERANCE:
        raise MetricError(f"negative FID {out[FID]:.3g}: the matrix square root failed numerically; not reported")
    if out[FID] < FID_TOLERANCE:
        raise MetricError(
            f"impossibly small FID {out[FID]:.3g}: the generated features have exactly the reference statistics "
            "(are the samples copies of the reference images?); not reported"
        )
    return out


def compute(
    generated: dict[str, torch.Tensor],
    real: dict[str, torch.Tensor],
    cfg: EvalConfig,
    which: frozenset[str] | None = None,
) -> dict:
    """The metrics themselves (all, or the METRICS groups in `which`), without the gates (the agreement tests
    compare this with torch-fidelity)."""
    wanted = METRICS.keys() if which is None else which
    g, r = generated["features"], real["features"]
    out = {}
    if "fid" in wanted:
        out[FID] = fid(g, r)
    if "fid_inf" in wanted and (extrapolated := fid_infinity(g, r, cfg.seed)) is not None:
        out[FID_INF], out[FID_INF_SE] = extrapolated
    if "is" in wanted and generated.get("logits") is not None and generated["logits"].shape[1]:  # not DINOv2
        out[IS_MEAN], out[IS_STD] = inception_score(generated["logits"], cfg.isc_splits, cfg.seed)
    if "kid" in wanted:
        subset = min(cfg.kid_subset_size, len(g), len(r))
        out[KID_MEAN], out[KID_STD] = kid(g, r, cfg.kid_subsets, subset, cfg.seed)
    if "prc" in wanted:
        out[PRECISION], out[RECALL] = precision_recall(g, r, cfg.prc_neighborhood, cfg.seed)
    if "dc" in wanted:
        out[DENSITY], out[COVERAGE] = density_coverage(g, r, cfg.dc_neighborhood, cfg.seed)
    return out

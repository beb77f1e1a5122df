"""Sample-quality metrics on encoder features, computed with torch-fidelity's metric functions.

Layered as in torch-fidelity: features → statistics → metric. Inputs are the dicts an Encoder returns:
{"features": (N, d) float64, "logits": (N, K)}; "generated" first, "real" second, as torch-fidelity expects.
"""

from __future__ import annotations

import math

import torch
from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from bench.config import EvalConfig
from bench.schema import COVERAGE, DENSITY, FID, FID_INF, IS_MEAN, IS_STD, KID_MEAN, KID_STD, PRECISION, RECALL

FID_TOLERANCE = 1e-6  # |FID| below this is numerically zero: identical statistics, or a failed square root


class MetricError(RuntimeError):
    """A metric cannot be computed meaningfully from these features; the message says why."""


def fid(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017)."""
    stats_gen, stats_real = fid_features_to_statistics(generated.double()), fid_features_to_statistics(real.double())
    return fid_statistics_to_metric(stats_gen, stats_real, verbose=False)["frechet_inception_distance"]


FID_INF_POINTS = 10  # FIDs at sample counts evenly spaced in 1/N (Chong & Forsyth 2020 fit 15 from 5k to 50k)
FID_INF_MIN_FRACTION = 0.2  # the smallest count: a fifth of the samples (and more than twice the feature dimension)


def fid_infinity(generated: torch.Tensor, real: torch.Tensor, seed: int = 0) -> float | None:
    """FID extrapolated to infinitely many generated samples (Chong & Forsyth 2020, "Effectively Unbiased FID and
    Inception Score and where to find them"): FID of random subsets of the generated features at FID_INF_POINTS
    counts N evenly spaced in 1/N, from FID_INF_MIN_FRACTION of them up to all of them, against the whole real set;
    a least-squares line in 1/N; its intercept. FID's bias grows roughly as 1/N, so the intercept does not depend on
    the sample count. None when there are too few samples for the smallest subset to exceed 2× the dimension."""
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
    slope = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    return float(y.mean() - slope * x.mean())


def inception_score(logits: torch.Tensor, splits: int, seed: int) -> tuple[float, float]:
    """exp E_x KL(p(y|x) || p(y)) over `splits` chunks (Salimans et al. 2016): mean and std over chunks."""
    out = isc_features_to_metric(logits.double(), splits=splits, shuffle=True, rng_seed=seed)
    return out["inception_score_mean"], out["inception_score_std"]


def kid(generated: torch.Tensor, real: torch.Tensor, subsets: int, subset_size: int, seed: int) -> tuple[float, float]:
    """Unbiased MMD² with the cubic polynomial kernel over random subsets (Bińkowski et al. 2018)."""
    out = kid_features_to_metric(
        generated,
        real,
        kid_subsets=subsets,
        kid_subset_size=subset_size,
        rng_seed=seed,
        kid_kernel="poly",
        kid_kernel_poly_degree=3,
        kid_kernel_poly_gamma=None,
        kid_kernel_poly_coef0=1,
        verbose=False,
    )
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


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


COPYING_MIN_SAMPLES = 20  # cells with fewer generated (or test) samples are left out of C_T, as in Meehan et al.


def copying_reference(train: torch.Tensor, test: torch.Tensor, cells: int = 20, seed: int = 0) -> dict:
    """The half of the C_T test (`data_copying`) that does not depend on the model, computed once per reference:
    the k-means cells of the training features (Lloyd's algorithm from `cells` seeded training points, at most 50
    iterations; an emptied cell keeps its centre), the cell of each test feature and its distance to the nearest
    training feature."""
    g = torch.Generator().manual_seed(seed)
    train = train.double()
    centres = train[torch.randperm(len(train), generator=g)[:cells]].clone()
    for _ in range(50):
        assign = nearest_centre(train, centres)
        moved = centres.clone()
        for c in range(len(centres)):
            members = train[assign == c]
            if len(members):
                moved[c] = members.mean(0)
        if torch.allclose(moved, centres):
            break
        centres = moved
    return {"centres": centres, "test_cell": nearest_centre(test, centres), "test_nn": nearest_distance(test, train)}


def data_copying(
    generated: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    cells: int = 20,
    seed: int = 0,
    reference: dict | None = None,
) -> float | None:
    """The C_T statistic of Meehan, Chaudhuri & Dasgupta 2020 ("A Non-Parametric Test to Detect Data-Copying in
    Generative Models"). The feature space is cut into `cells` cells by k-means on the training features. In each
    cell, the distances to the nearest training feature of the generated samples are compared with those of the
    held-out test samples by the Mann-Whitney U test, as its z-score: negative when generated samples sit closer to
    the training data than unseen real data do. C_T is the average of the cells' z-scores weighted by the cells'
    share of test samples, over the cells with at least COPYING_MIN_SAMPLES generated and test samples. C_T ≪ 0
    (the authors flag below −3) means data copying; ≈ 0 none; > 0 samples further from the training data than
    test data (underfitting). None when no cell holds enough samples (e.g. a model collapsed into a corner).
    `reference`: copying_reference(train, test, cells, seed), when computed once for many models."""
    if reference is None:
        reference = copying_reference(train, test, cells, seed)
    centres, test_cell, test_nn = reference["centres"], reference["test_cell"], reference["test_nn"]
    gen_cell, gen_nn = nearest_centre(generated, centres), nearest_distance(generated, train)
    total, weight = 0.0, 0.0
    for c in range(len(centres)):
        q, p = gen_nn[gen_cell == c], test_nn[test_cell == c]
        m, n = len(q), len(p)
        if m < COPYING_MIN_SAMPLES or n < COPYING_MIN_SAMPLES:
            continue
        # U = #{(i, j): L(Q_i) > L(P_j)} (+ half the ties), its null mean m n / 2 and variance m n (m + n + 1) / 12
        u = (q[:, None] > p[None, :]).sum().item() + 0.5 * (q[:, None] == p[None, :]).sum().item()
        z = (u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12)
        share = n / len(test_nn)
        total, weight = total + share * z, weight + share
    if weight == 0:  # e.g. a collapsed model whose samples all fall in a cell with few test images
        return None
    return total / weight


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


def sample_metrics(generated: dict[str, torch.Tensor], real: dict[str, torch.Tensor], cfg: EvalConfig) -> dict:
    """All sample-quality metrics of one evaluation, by their MLflow names, behind the sanity gates: too few
    samples for the feature dimension, non-finite features or metrics, a negative or numerically zero FID each
    raise MetricError (the cell is recorded FAILED) instead of producing a number."""
    check_counts(len(generated["features"]), len(real["features"]), generated["features"].shape[1])
    for side, feats in (("generated", generated), ("reference", real)):
        for key, value in feats.items():
            if not torch.isfinite(value).all():
                raise MetricError(
                    f"the {side} {key} contain NaN or infinite values: the images or the encoder "
                    "are degenerate; not reported"
                )
    out = compute(generated, real, cfg)
    bad = {k: v for k, v in out.items() if not math.isfinite(v)}
    if bad:
        raise MetricError(f"non-finite metric values {bad}: the samples or features are degenerate")
    if out[FID] < -FID_TOLERANCE:
        raise MetricError(f"negative FID {out[FID]:.3g}: the matrix square root failed numerically; not reported")
    if out[FID] < FID_TOLERANCE:
        raise MetricError(
            f"impossibly small FID {out[FID]:.3g}: the generated features have exactly the reference statistics "
            "(are the samples copies of the reference images?); not reported"
        )
    return out


def compute(generated: dict[str, torch.Tensor], real: dict[str, torch.Tensor], cfg: EvalConfig) -> dict:
    """The metrics themselves, without the gates (the agreement tests compare this with torch-fidelity)."""
    subset = min(cfg.kid_subset_size, len(generated["features"]), len(real["features"]))
    out = {FID: fid(generated["features"], real["features"])}
    extrapolated = fid_infinity(generated["features"], real["features"], cfg.seed)
    if extrapolated is not None:
        out[FID_INF] = extrapolated
    if generated.get("logits") is not None and generated["logits"].shape[1]:  # a classifier head (not DINOv2)
        out[IS_MEAN], out[IS_STD] = inception_score(generated["logits"], cfg.isc_splits, cfg.seed)
    out[KID_MEAN], out[KID_STD] = kid(generated["features"], real["features"], cfg.kid_subsets, subset, cfg.seed)
    out[PRECISION], out[RECALL] = precision_recall(
        generated["features"], real["features"], cfg.prc_neighborhood, cfg.seed
    )
    out[DENSITY], out[COVERAGE] = density_coverage(
        generated["features"], real["features"], cfg.dc_neighborhood, cfg.seed
    )
    return out

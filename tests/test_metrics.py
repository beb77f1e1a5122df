"""Metrics against reference implementations (scipy, numpy) and closed-form cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from bench.config import EvalConfig
from bench.eval import metrics


def fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's matrix square root (Heusel et al. 2017)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def kid_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD² with k(x, y) = (x·y/d + 1)³ (Bińkowski et al. 2018), all samples, no subsets."""
    d, m = a.shape[1], len(a)
    kxx, kyy, kxy = ((a @ a.T) / d + 1) ** 3, ((b @ b.T) / d + 1) ** 3, ((a @ b.T) / d + 1) ** 3
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    )


def features(n, d, shift=0.0, scale=1.0, seed=0):
    """n draws of one correlated Gaussian (a fixed mixing matrix), shifted and scaled; seed picks the draws."""
    mixing = torch.randn(d, d, generator=torch.Generator().manual_seed(1234), dtype=torch.float64) / math.sqrt(d)
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mixing) * scale + shift


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (0.5, 1.0), (0.0, 2.0), (1.0, 0.5)])
def test_fid_matches_scipy(shift, scale):
    a, b = features(600, 16, seed=1), features(500, 16, shift, scale, seed=2)
    ours, ref = metrics.fid(a, b), fid_scipy(a.numpy(), b.numpy())
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-8)


def test_fid_of_identical_sets_is_zero_and_closed_form_for_shifted_gaussians():
    a = features(1000, 8, seed=3)
    assert abs(metrics.fid(a, a)) < 1e-8
    # same covariance, mean shifted by v: FID = |v|² exactly
    v = torch.linspace(-1, 1, 8, dtype=torch.float64)
    assert metrics.fid(a, a + v) == pytest.approx((v**2).sum().item(), rel=1e-8)


def test_kid_matches_numpy_reference():
    a, b = features(120, 10, seed=4), features(120, 10, 0.3, seed=5)
    mean, std = metrics.kid(a, b, subsets=1, subset_size=120, seed=0)  # one subset of all: a permutation
    assert mean == pytest.approx(kid_numpy(a.numpy(), b.numpy()), rel=1e-6)


@pytest.mark.parametrize("gram", [True, False], ids=["kernels-once", "per-subset"])
def test_kid_mean_and_std_over_subsets_match_numpy_on_the_same_subsets(gram, monkeypatch):
    """kid_std over several subsets against the numpy reference on the same random subsets (the protocol's: a
    RandomState(seed) drawing generated then real indices per subset, without replacement; population std), with
    the kernel matrices computed once and, where they would not fit, per batch of subsets."""
    if not gram:
        monkeypatch.setattr(metrics, "KID_GRAM_MAX_ENTRIES", 0)
    a, b = features(300, 6, seed=8), features(260, 6, 0.4, seed=9)
    subsets = metrics.KID_SUBSETS_AT_ONCE + 3  # a full batch of subsets and a partial one
    mean, std = metrics.kid(a, b, subsets=subsets, subset_size=90, seed=3)
    rng = np.random.RandomState(3)
    mmds = []
    for _ in range(subsets):
        i, j = rng.choice(300, 90, replace=False), rng.choice(260, 90, replace=False)
        mmds.append(kid_numpy(a.numpy()[i], b.numpy()[j]))
    assert mean == pytest.approx(np.mean(mmds), rel=1e-10)
    assert std == pytest.approx(np.std(mmds), rel=1e-9) and std > 0


def test_kid_is_near_zero_for_the_same_distribution():
    # unbiased: zero within its spread over subsets for one distribution, far above it for shifted features
    mean, std = metrics.kid(features(500, 10, seed=6), features(500, 10, seed=7), subsets=20, subset_size=200, seed=0)
    far, _ = metrics.kid(features(500, 10, seed=6), features(500, 10, 1.0, seed=7), subsets=20, subset_size=200, seed=0)
    assert abs(mean) < 2 * std and far > 20 * std


def test_inception_score_closed_forms():
    k = 10
    uniform = torch.zeros(1000, k, dtype=torch.float64)
    assert metrics.inception_score(uniform, splits=1, seed=0)[0] == pytest.approx(1.0)
    confident = 100.0 * torch.eye(k, dtype=torch.float64).repeat(100, 1)  # balanced, certain
    assert metrics.inception_score(confident, splits=1, seed=0)[0] == pytest.approx(k, rel=1e-6)


def test_precision_recall_extremes():
    a = features(300, 8, seed=8)
    assert metrics.precision_recall(a, a.clone(), neighborhood=3) == (1.0, 1.0)
    assert metrics.precision_recall(a + 100.0, a, neighborhood=3) == (0.0, 0.0)


def test_sample_metrics_names_and_too_few_samples():
    cfg = EvalConfig(num_samples=300, kid_subset_size=100, kid_subsets=5)
    gen = {"features": features(300, 8, seed=9), "logits": torch.randn(300, 10, dtype=torch.float64)}
    real = {"features": features(400, 8, seed=10), "logits": torch.randn(400, 10, dtype=torch.float64)}
    out = metrics.sample_metrics(gen, real, cfg)
    assert set(out) == {
        "fid",
        "fid_inf",
        "fid_inf_se",
        "is_mean",
        "is_std",
        "kid_mean",
        "kid_std",
        "precision",
        "recall",
        "density",
        "coverage",
    }
    assert all(math.isfinite(v) for v in out.values())
    few = {"features": features(8, 8, seed=11), "logits": torch.randn(8, 10, dtype=torch.float64)}
    with pytest.raises(metrics.MetricError, match="FID needs more images than feature dimensions: 8 generated"):
        metrics.sample_metrics(few, real, cfg)


def test_metrics_are_batch_size_independent_through_the_encoder():
    from bench.eval.encoders import DomainNet, Encoder

    torch.manual_seed(0)
    ex = Encoder("domain", "x", "uint8/255", DomainNet((1, 28, 28), 10, 16), {})
    images = torch.randint(0, 256, (70, 1, 28, 28), dtype=torch.uint8)
    a, b = ex(images, batch_size=7), ex(images, batch_size=70)
    assert torch.allclose(a["features"], b["features"], atol=1e-5)


def test_precision_recall_subsamples_a_larger_real_set_to_the_generated_count():
    from torch_fidelity.metric_prc import prc_features_to_metric

    g = torch.Generator().manual_seed(0)
    generated = torch.randn(300, 8, generator=g, dtype=torch.float64)
    real = torch.cat(
        [
            torch.randn(500, 8, generator=g, dtype=torch.float64),
            3 + torch.randn(400, 8, generator=g, dtype=torch.float64),
        ]
    )
    idx = torch.randperm(900, generator=torch.Generator().manual_seed(5))[:300]
    ref = prc_features_to_metric(
        generated, real[idx], prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False
    )
    assert metrics.precision_recall(generated, real, neighborhood=3, seed=5) == (ref["precision"], ref["recall"])
    assert metrics.precision_recall(generated, real, neighborhood=3, seed=6) != (ref["precision"], ref["recall"])


def test_precision_recall_subsamples_a_larger_generated_set_to_the_real_count():
    """Equal counts on both sides whichever is larger (the quick suite scores 2,000 samples against 1,437 real
    images): the generated side is subsampled too, not compared at 2,000 against 1,437."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    g = torch.Generator().manual_seed(1)
    real = torch.randn(200, 8, generator=g, dtype=torch.float64)
    generated = torch.cat([torch.randn(250, 8, generator=g, dtype=torch.float64), 2 + torch.randn(250, 8, generator=g)])
    idx = torch.randperm(500, generator=torch.Generator().manual_seed(5))[:200]
    ref = prc_features_to_metric(
        generated[idx], real, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False
    )
    assert metrics.precision_recall(generated, real, neighborhood=3, seed=5) == (ref["precision"], ref["recall"])
    unequal = prc_features_to_metric(
        generated, real, prc_neighborhood=3, prc_batch_size=10000, save_cpu_ram=False, verbose=False
    )
    assert metrics.precision_recall(generated, real, neighborhood=3, seed=5) != (
        unequal["precision"],
        unequal["recall"],
    )


def test_sanity_gates_refuse_impossible_values():
    cfg = EvalConfig(num_samples=300, kid_subset_size=100, kid_subsets=5)
    g = torch.Generator().manual_seed(0)
    real = {"features": torch.randn(300, 8, generator=g, dtype=torch.float64), "logits": torch.randn(300, 10)}
    with pytest.raises(metrics.MetricError, match="impossibly small FID"):
        metrics.sample_metrics(real, real, cfg)  # the reference set handed in as samples
    few = {k: v[:8] for k, v in real.items()}
    with pytest.raises(metrics.MetricError, match="FID needs more images than feature dimensions: 8 generated"):
        metrics.sample_metrics(few, real, cfg)
    nan = {"features": real["features"].clone(), "logits": real["logits"]}
    nan["features"][0, 0] = float("nan")
    with pytest.raises(metrics.MetricError, match="non-finite|NaN|nan"):
        metrics.sample_metrics(nan, real, cfg)
    other = {"features": torch.randn(300, 8, generator=g, dtype=torch.float64) + 0.5, "logits": real["logits"]}
    assert metrics.sample_metrics(other, real, cfg)["fid"] > 0.1


def test_fid_inf_removes_most_of_the_sample_count_bias_on_gaussians():
    """Two Gaussian feature sets with a known Fréchet distance: N(0, I) (200k samples, so the real statistics are
    nearly exact) and N(0.3, 1.5² I) in 8 dimensions, ‖μ‖² + d(1 − s)² = 8·0.09 + 8·0.25 = 2.72. Over 20 draws of
    500 generated samples, FID overshoots the truth (its bias grows as 1/N); the extrapolation to N → ∞ sits closer
    than FID at all 500 and far closer than at the smallest subset it fits (100)."""
    from bench.eval.metrics import fid, fid_infinity

    dim, truth = 8, 8 * 0.09 + 8 * (1 - 1.5) ** 2
    real = torch.randn(200_000, dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inf, full, smallest = [], [], []
    for rep in range(20):
        gen = 0.3 + 1.5 * torch.randn(500, dim, generator=torch.Generator().manual_seed(100 + rep), dtype=torch.float64)
        inf.append(fid_infinity(gen, real, rep)[0])
        full.append(fid(gen, real))
        smallest.append(fid(gen[:100], real))
    bias = {name: abs(sum(v) / len(v) - truth) for name, v in (("inf", inf), ("full", full), ("small", smallest))}
    assert bias["full"] > 0.05 and bias["small"] > 0.3  # the bias fid_inf is there to remove
    assert bias["inf"] < 0.75 * bias["full"] and bias["inf"] < 0.2 * bias["small"], bias
    assert fid_infinity(gen[:17], real) is None  # 20% of 17 is under 2·8 + 1: no subset to fit
    # the intercept's standard error: the spread of the intercept over fresh subset draws of the same samples,
    # within a factor of 2 (measured: 0.17 against 0.12)
    draws = [fid_infinity(gen, real, seed) for seed in range(30)]
    spread = float(np.std([value for value, _ in draws], ddof=1))
    assert 0.5 * spread < float(np.mean([se for _, se in draws])) < 2.0 * spread


def test_precision_and_recall_are_not_swapped():
    """Kynkäänniemi et al. 2019's asymmetry: a mode-collapsed generator (samples from a tenth of the real spread)
    has high precision and low recall; an over-dispersed one (three times the spread) the reverse. torch-fidelity
    before 0.4.0 returned the two swapped: this test fails on such a swap."""
    real = torch.randn(1000, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    collapsed = 0.1 * torch.randn(1000, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    dispersed = 3.0 * torch.randn(1000, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    p, r = metrics.precision_recall(collapsed, real, neighborhood=3)
    assert p > 0.9 and r < 0.2, (p, r)
    p, r = metrics.precision_recall(dispersed, real, neighborhood=3)
    assert p < 0.3 and r > 0.9, (p, r)

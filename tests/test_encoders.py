"""Issue 18: several encoders per suite, DINOv2 through its real loading code, density and coverage against the
reference `prdc` package, and the data-copying check on images that are copied, held out, or noisy."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from bench.cli import main
from bench.data import load
from bench.eval import metrics
from bench.eval.encoders import build_encoder, weights_path
from bench.eval.pipeline import evaluate_samples
from bench.eval.real_features import real_features
from bench.schema import ENCODERS
from tests.conftest import child_runs, seed_cache, seed_vit_features, tiny_config

DINOV2_ENV = ENCODERS["dinov2"].weights.env


def _features(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift).float().double()


@pytest.mark.parametrize(("shift", "scale"), [(0.0, 1.0), (0.5, 1.0), (0.0, 1.8), (0.0, 0.4)])
def test_density_and_coverage_agree_with_the_prdc_package(shift, scale):
    from prdc import compute_prdc

    real, fake = _features(400, 12, seed=1), _features(400, 12, seed=2, shift=shift, scale=scale)
    ours = metrics.density_coverage(fake, real, k=5)
    ref = compute_prdc(real.numpy(), fake.numpy(), nearest_k=5)
    assert ours == pytest.approx((ref["density"], ref["coverage"]), abs=1e-12)


def test_density_and_coverage_see_collapse_and_outliers():
    real = _features(500, 8, seed=3)
    collapsed = _features(500, 8, seed=4, scale=0.2)  # all samples near the mode
    density, coverage = metrics.density_coverage(collapsed, real, k=5)
    assert density > 2.0 and coverage < 0.5  # crowded where real data is dense, most of it uncovered
    matched = metrics.density_coverage(_features(500, 8, seed=5), real, k=5)
    assert 0.8 < matched[0] < 1.2 and matched[1] > 0.9


def test_the_copying_statistic_on_synthetic_features():
    train, test = _features(3000, 6, seed=6), _features(600, 6, seed=7)
    copied = train[:600]
    fresh = _features(600, 6, seed=8)
    noisy = train[600:1200] + 0.5 * _features(600, 6, seed=9)
    blurred = train[600:1200] + 1.5 * _features(600, 6, seed=9)
    assert metrics.data_copying(copied, train, test, cells=10) < -5  # every copied distance is 0: U = 0 per cell
    assert abs(metrics.data_copying(fresh, train, test, cells=10)) < 3
    assert metrics.data_copying(noisy, train, test, cells=10) > -3  # noisy copies: not flagged
    assert metrics.data_copying(blurred, train, test, cells=10) > 3  # further from the training data: underfitting


def test_the_copying_statistic_equals_scipys_kmeans_and_mann_whitney():
    """C_T rebuilt from independent parts: scipy's k-means (Lloyd's algorithm from the same seeded training
    points), scipy's nearest-neighbour distances (cKDTree) and scipy's Mann-Whitney U per cell, weighted by the
    cells' test shares (Meehan et al. 2020)."""
    from scipy.cluster.vq import kmeans2
    from scipy.spatial import cKDTree
    from scipy.stats import mannwhitneyu

    train, test = _features(3000, 6, seed=6), _features(600, 6, seed=7)
    generated = train[600:1200] + 0.7 * _features(600, 6, seed=9)
    cells, seed = 10, 3
    start = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:cells]]
    centres, _ = kmeans2(train.numpy(), start.numpy(), iter=50, minit="matrix", missing="warn")
    tree, cell_of = cKDTree(train.numpy()), lambda x: cKDTree(centres).query(x.numpy())[1]
    gen_nn, test_nn = tree.query(generated.numpy())[0], tree.query(test.numpy())[0]
    gen_cell, test_cell = cell_of(generated), cell_of(test)
    total = weight = 0.0
    for c in range(cells):
        q, p = gen_nn[gen_cell == c], test_nn[test_cell == c]
        if min(len(q), len(p)) < metrics.COPYING_MIN_SAMPLES:
            continue
        u = mannwhitneyu(q, p, alternative="two-sided", method="asymptotic").statistic  # U of the first sample
        m, n = len(q), len(p)
        z = (u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12)
        total, weight = total + n / len(test) * z, weight + n / len(test)
    expected = total / weight
    ours = metrics.data_copying(generated, train, test, cells=cells, seed=seed)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # computed once per reference (the suite's cache), the model's half gives the same number
    reference = metrics.copying_reference(train, test, cells, seed)
    assert metrics.data_copying(generated, train, test, cells, seed, reference) == ours


def test_the_copying_cells_are_cached_per_reference(tmp_path, monkeypatch):
    """real_features.copying_cells: computed once per (train and test feature digests, cells, seed), then loaded."""
    from bench.config import EvalConfig
    from bench.eval import real_features as evaluate
    from bench.eval.real_features import SplitFeatures

    train, test = _features(2000, 6, seed=6), _features(400, 6, seed=7)
    refs = [SplitFeatures({"features": f}, digest, False, 0.0, tmp_path) for f, digest in ((train, "tr"), (test, "te"))]
    cfg = EvalConfig(copying_cells=8)
    first = evaluate.copying_cells(*refs, cfg, tmp_path)
    assert len(list(tmp_path.glob("copying-*.pt"))) == 1

    def not_again(*args):
        raise AssertionError("recomputed despite the cache")

    monkeypatch.setattr(evaluate, "copying_reference", not_again)
    again = evaluate.copying_cells(*refs, cfg, tmp_path)
    assert all(torch.equal(first[k], again[k]) for k in first)
    with pytest.raises(AssertionError, match="recomputed"):  # another seed is another key
        evaluate.copying_cells(*refs, EvalConfig(copying_cells=8, seed=1), tmp_path)


def test_memorisation_is_flagged_for_copied_training_images_only(quick_run):
    """The check through the real pipeline (digits, domain features, `bench eval`'s scoring): a "model" that returns
    training images verbatim is flagged; one that returns held-out test images is not; a noisy one is not."""
    digits = load("digits")
    cfg = dataclasses.replace(tiny_config().suite("quick").eval, num_samples=300, kid_subset_size=100)
    cache = quick_run["results"] / "cache"
    domain = build_encoder("domain", digits, tiny_config().domain, cache, torch.device("cpu"))
    real = (real_features(domain, digits, cfg, cache),)
    g = torch.Generator().manual_seed(0)

    def c_t(images: torch.Tensor) -> float:
        ev = evaluate_samples(images[:300], digits, cfg, real, torch.device("cpu"))
        return ev.metrics["copying_ct"]

    copied = c_t(digits.train_images[torch.randperm(len(digits.train_images), generator=g)])
    held_out = c_t(digits.test_images)
    noise = torch.randint(-40, 41, digits.train_images.shape, generator=g)
    noisy = c_t((digits.train_images.int() + noise).clamp(0, 255).to(torch.uint8))
    assert copied < -3, copied
    assert held_out > -3 and noisy > -3, (held_out, noisy)


# ------------------------------------------------------------------------------------------------------ DINOv2


def test_dinov2_features_equal_the_librarys_on_the_same_weights(dinov2_s_weights, monkeypatch):
    """genbench's encoder (weights found through BENCH_DINOV2_WEIGHTS, loaded by the real code) against timm's own
    model built from the same file, on images preprocessed independently with torchvision: the same CLS features."""
    import timm
    import torchvision.transforms.functional as TF
    from timm.models.vision_transformer import checkpoint_filter_fn

    monkeypatch.setenv(DINOV2_ENV, str(dinov2_s_weights))
    digits = load("digits")
    ex = build_encoder("dinov2-vits14", digits, None, Path("unused"), torch.device("cpu"))
    assert ex.feature_dim == 384 and "bicubic" in ex.resize and len(ex.weights_digest) == 64
    images = digits.test_images[:6]
    ours = ex(images, batch_size=4)
    assert set(ours) == {"features"} and ours["features"].shape == (6, 384)

    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224).eval()
    ref.load_state_dict(checkpoint_filter_fn(torch.load(dinov2_s_weights, weights_only=True), ref))
    x = images.expand(-1, 3, -1, -1).float() / 255
    x = TF.resize(x, [224, 224], interpolation=TF.InterpolationMode.BICUBIC, antialias=False)
    x = TF.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    with torch.no_grad():
        theirs = ref(x).double()
    assert torch.allclose(ours["features"], theirs, atol=1e-5, rtol=1e-5)
    assert ours["features"].std(0).mean() > 0.01  # the features depend on the image
    # the preprocessing matters at this tolerance: bilinear instead of bicubic gives other features
    x_bilinear = TF.resize(images.expand(-1, 3, -1, -1).float() / 255, [224, 224], antialias=False)
    with torch.no_grad():
        other = ref(TF.normalize(x_bilinear, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])).double()
    assert not torch.allclose(ours["features"], other, atol=1e-3)


def test_dinov2_without_weights_offline_is_a_one_line_error_in_seconds(tmp_path, monkeypatch):
    monkeypatch.delenv(DINOV2_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    with pytest.raises(Exception, match="BENCH_DINOV2_WEIGHTS") as info:
        weights_path("dinov2")
    assert "dinov2_vitl14_pretrain.pth" in str(info.value) and "hub cache" in str(info.value)
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results"))
    start = time.perf_counter()
    args = ["run", "--suite", "quick", "--set", 'eval.extra_encoders=["inception", "dinov2"]', "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and time.perf_counter() - start < 60
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and ("Inception" in lines[0] or "DINOv2" in lines[0]), result.output
    assert not (tmp_path / "results" / "checkpoints").exists()  # nothing trained


def test_a_suite_with_two_encoders_logs_both_under_distinct_names(quick_run, dinov2_s_weights, tmp_path, monkeypatch):
    """An extra encoder under the default executor: the worker process builds every encoder the cell needs
    (`Cell.encoders`) and scores the same samples in each. The real split features of the ViT are seeded into the
    cache under their real key (the suite's preflight would compute them for minutes on a CPU); the samples go
    through the real ViT in the worker. A worker that built only the first encoder fails the cell (KeyError)."""
    from bench.report import files as report_files
    from bench.run import suite as runner

    monkeypatch.setenv(DINOV2_ENV, str(dinov2_s_weights))  # the worker process inherits it, as a user's would
    seed_cache(quick_run, tmp_path)
    seed_vit_features(tmp_path)
    extra = (
        "models=['gan-mlp']",
        "seeds=[0]",
        "eval.num_samples=400",  # more than the 384 ViT-S features
        "eval.kid_subset_size=100",
        "eval.ais.images=0",
        "train.eval_samples=100",
        'eval.extra_encoders=["dinov2-vits14"]',
    )
    lines: list[str] = []
    cfg = tiny_config(*extra)
    runner.run_suite(cfg, "quick", results=tmp_path, progress=False, echo=lines.append)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = child_runs(uri).iloc[0]
    assert run["status"] == "FINISHED", (run.get("tags.bench.error"), lines[-6:])
    assert int(run["tags.bench.pid"]) != __import__("os").getpid()  # a worker process scored it
    # (no fid_inf in 384-d features from 400 samples: its smallest subset must exceed 2 x 384)
    for base in ("fid", "kid_mean", "precision", "recall", "density", "coverage"):
        assert np.isfinite(run[f"metrics.{base}"]) and np.isfinite(run[f"metrics.{base}_dinov2_vits14"]), base
    for base in ("fid", "kid_mean"):
        assert run[f"metrics.{base}"] != run[f"metrics.{base}_dinov2_vits14"], base
    assert "metrics.is_mean_dinov2_vits14" not in run  # DINOv2 has no classifier: no Inception Score
    client = mlflow.MlflowClient(uri)
    proto = json.loads(Path(client.download_artifacts(run["run_id"], "protocol.json")).read_text())
    (part,) = proto["extra_encoders"]
    assert part["encoder"] == "dinov2-vits14" and len(part["weights_digest"]) == 64 and part["features_digest"]
    # one encoder alone is another protocol: another leaderboard table
    single = tiny_config(*extra[:-1])
    runner.run_suite(single, "quick", results=tmp_path, progress=False, echo=lines.append)
    assert len(set(child_runs(uri)["tags.bench.protocol"])) == 2
    md = report_files.write_report(uri, "quick", tmp_path / "r")["markdown"].read_text()
    assert "FD ↓ [dinov2-vits14]" in md and "coverage ↑ [dinov2-vits14]" in md
    assert "Encoders: every sample metric is computed in each encoder's features" in md
    assert "nearest training images" in md

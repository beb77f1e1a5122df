"""The inception encoder against torch-fidelity itself: the same weights file, the same images, both paths.

The real TF-FID weights cannot be downloaded here, so both sides load one randomly initialised state dict through
the real loading code (conftest.inception_weights). The sample counts are far below the 2048 feature dimensions
(Inception runs at ~8 images/s on this CPU), so the comparison uses the metric computation behind the sanity gates
(`metrics.compute`); the gates are tested in test_metrics.py.
"""

from __future__ import annotations

import pytest
import torch
import torch_fidelity
from torch_fidelity.metric_kid import kid_features_to_metric

from bench.config import DomainConfig, EvalConfig
from bench.data import load
from bench.eval import encoders as features
from bench.eval import metrics
from bench.schema import INCEPTION_WEIGHTS

CPU = torch.device("cpu")
N = 24


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


@pytest.fixture(scope="module")
def encoder(inception_weights, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(INCEPTION_WEIGHTS.env, str(inception_weights))
        return features.build_encoder(
            "inception", load("digits"), DomainConfig(), tmp_path_factory.mktemp("cache"), CPU
        )


def test_encoder_records_weights_digest_and_resize(encoder, inception_weights):
    assert encoder.weights_digest == features.file_digest(inception_weights)
    assert "299x299" in encoder.resize and "inception-v3-compat" in encoder.preprocessing
    with pytest.raises(features.EncoderError, match="uint8"):
        encoder(torch.zeros(2, 1, 28, 28))


@pytest.mark.integration  # torch-fidelity's whole pipeline, its DataLoader worker processes included
def test_inception_metrics_equal_torch_fidelity(encoder, inception_weights):
    digits = load("digits")
    real = digits.test_images[:N]  # (N, 1, 28, 28) uint8: grayscale, expanded inside the encoder
    g = torch.Generator().manual_seed(0)
    noise = 60 * torch.randn(N, 1, 28, 28, generator=g)
    noise[: N // 2] = 0  # half clean digits, half noisy ones: precision and recall strictly between 0 and 1
    generated = (digits.train_images[:N].float() + noise).clamp(0, 255).to(torch.uint8)
    cfg = EvalConfig(
        encoder="inception",
        num_samples=N,
        batch_size=8,
        kid_subsets=20,
        kid_subset_size=12,
        isc_splits=3,
        prc_neighborhood=3,
        seed=7,
    )
    ours = metrics.compute(encoder(generated, cfg.batch_size), encoder(real, cfg.batch_size), cfg)

    reference = torch_fidelity.calculate_metrics(
        input1=_Images(generated.expand(-1, 3, -1, -1).contiguous()),
        input2=_Images(real.expand(-1, 3, -1, -1).contiguous()),
        cuda=False,
        batch_size=cfg.batch_size,
        isc=True,
        fid=True,
        kid=True,
        prc=True,
        feature_extractor="inception-v3-compat",
        feature_layer_isc="logits_unbiased",
        feature_layer_fid="2048",
        feature_layer_kid="2048",
        feature_layer_prc="2048",  # torch-fidelity's default for precision/recall is VGG-16
        feature_extractor_weights_path=str(inception_weights),
        isc_splits=cfg.isc_splits,
        kid_subsets=cfg.kid_subsets,
        kid_subset_size=cfg.kid_subset_size,
        prc_neighborhood=cfg.prc_neighborhood,
        rng_seed=cfg.seed,
        cache=False,
        verbose=False,
    )
    pairs = {
        metrics.FID: "frechet_inception_distance",
        metrics.IS_MEAN: "inception_score_mean",
        metrics.IS_STD: "inception_score_std",
        metrics.KID_MEAN: "kernel_inception_distance_mean",
        metrics.KID_STD: "kernel_inception_distance_std",
        metrics.PRECISION: "precision",
        metrics.RECALL: "recall",
    }
    for ours_key, theirs_key in pairs.items():
        # torch-fidelity computes KID on float32 features in float32 arithmetic, genbench in float64; on this tiny
        # KID (~2e-3) that rounding alone moves kid_std by ~1.6e-4 relative, 2.5e-7 absolute (below the printed
        # digits). The float64 computation is checked exactly against torch-fidelity's own function below.
        tolerance = 1e-6 if ours_key in (metrics.KID_MEAN, metrics.KID_STD) else 1e-12
        assert ours[ours_key] == pytest.approx(reference[theirs_key], rel=1e-4, abs=tolerance), ours_key
    fg, fr = encoder(generated, cfg.batch_size)["features"], encoder(real, cfg.batch_size)["features"]
    kid64 = kid_features_to_metric(
        fg, fr, kid_subsets=20, kid_subset_size=12, rng_seed=7, kid_kernel="poly", kid_kernel_poly_degree=3,
        kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, verbose=False,
    )  # fmt: skip
    assert ours[metrics.KID_MEAN] == pytest.approx(kid64["kernel_inception_distance_mean"], rel=1e-12)
    assert ours[metrics.KID_STD] == pytest.approx(kid64["kernel_inception_distance_std"], rel=1e-12)
    # the comparison is not vacuous: the random network separates the two sets and its softmax is peaked
    assert ours[metrics.FID] > 0.1 and ours[metrics.IS_MEAN] > 1.5
    assert 0.0 < ours[metrics.PRECISION] < 1.0 and 0.0 < ours[metrics.RECALL] < 1.0


def _pngs(folder, images: torch.Tensor, suffix: str = ".png"):
    from PIL import Image

    folder.mkdir()
    for i, image in enumerate(images[:, 0].numpy()):
        Image.fromarray(image).save(folder / f"{i:03d}{suffix}")
    return folder


@pytest.mark.slow  # Inception passes over a few dozen images, several times
def test_bench_eval_scores_a_folder_against_a_folder_as_torch_fidelity_does(inception_weights, tmp_path, monkeypatch):
    """`bench eval --samples A/ --reference B/` with no suite or dataset: Inception features, metrics named with
    the encoder, FID equal to torch-fidelity's `calculate_metrics(input1=A, input2=B, fid=True)` on the same weights
    and files. `--metrics kid` computes only KID (one encoder pass a side, no other metric). An unknown metric, or
    too few images for FID without --allow-small-n, fails in seconds before any image is read or encoded. A folder
    of mixed sizes is resized (said, and in the protocol); a folder against itself scores FID 0 with a warning.
    Twelve images a side: Inception's cost is per image (~8 images/s on a 2-core CPU)."""
    import json

    from click.testing import CliRunner
    from PIL import Image

    from bench.cli import main

    m = 12
    monkeypatch.setenv(INCEPTION_WEIGHTS.env, str(inception_weights))
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results"))
    digits = load("digits")
    noise = 60 * torch.randn(m, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    a = _pngs(tmp_path / "a", (digits.train_images[:m].float() + noise).clamp(0, 255).to(torch.uint8))
    b = _pngs(tmp_path / "b", digits.test_images[:m])
    cli = CliRunner()
    base = ["eval", "--samples", str(a), "--reference", str(b), "--json", "--batch-size", "6"]

    too_few = cli.invoke(main, base)
    assert too_few.exit_code == 2 and "--allow-small-n" in too_few.output and "2048-d inception" in too_few.output
    unknown = cli.invoke(main, ["eval", "--samples", str(tmp_path / "absent"), "--reference", str(b),
                                "--metrics", "fid,sharpness"])  # fmt: skip
    assert unknown.exit_code == 2 and "unknown metric 'sharpness'" in unknown.output  # before the folder is read

    scored = cli.invoke(main, [*base, "--allow-small-n"])
    assert scored.exit_code == 0, scored.output
    result = json.loads(scored.stdout)
    assert result["encoder"] == "inception" and result["encoders"] == ["inception"]
    assert "fid" not in result["metrics"] and {"fid_inception", "kid_mean_inception"} <= set(result["metrics"])
    assert "--allow-small-n" in scored.stderr
    theirs = torch_fidelity.calculate_metrics(
        input1=str(a), input2=str(b), cuda=False, batch_size=6, fid=True, feature_extractor="inception-v3-compat",
        feature_layer_fid="2048", feature_extractor_weights_path=str(inception_weights), cache=False, verbose=False,
    )  # fmt: skip
    assert result["metrics"]["fid_inception"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)
    assert result["metrics"]["fid_inception"] > 0.1

    passes, called = [], []
    with pytest.MonkeyPatch.context() as mp:
        encoder_call = features.Encoder.__call__
        mp.setattr(features.Encoder, "__call__", lambda self, *a, **k: passes.append(1) or encoder_call(self, *a, **k))
        for name in ("fid", "precision_recall", "density_coverage", "inception_score", "fid_infinity"):
            mp.setattr(metrics, name, lambda *a, _n=name, **k: called.append(_n))
        kid_only = cli.invoke(main, [*base, "--metrics", "kid"])  # KID has no small-N rule
    assert kid_only.exit_code == 0, kid_only.output
    kept = json.loads(kid_only.stdout)["metrics"]
    assert {k for k in kept if not k.startswith("eval/")} == {"kid_mean_inception", "kid_std_inception"}
    assert kept["kid_mean_inception"] == pytest.approx(result["metrics"]["kid_mean_inception"], rel=1e-12)
    assert len(passes) == 2 and called == []

    mixed = _pngs(tmp_path / "mixed", digits.train_images[:m], suffix=".jpg")
    for i in range(3):  # three of them 32x32
        Image.fromarray(digits.train_images[i, 0].numpy()).resize((32, 32)).save(mixed / f"{i:03d}.jpg")
    itself = cli.invoke(main, ["eval", "--samples", str(mixed), "--reference", str(mixed), "--json",
                               "--allow-small-n", "--metrics", "fid", "--batch-size", "6"])  # fmt: skip
    assert itself.exit_code == 0, itself.output
    assert abs(json.loads(itself.stdout)["metrics"]["fid_inception"]) < 1e-3
    assert "the samples are the reference images" in itself.stderr
    assert "samples: 3 of 12 images resized to 28x28, the folder's most common size (PIL bicubic" in itself.stderr

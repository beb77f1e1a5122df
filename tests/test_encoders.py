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

from bench import schema
from bench.cli import main
from bench.data import load
from bench.eval import copying, metrics
from bench.eval.encoders import build_encoder, weights_path
from bench.eval.pipeline import evaluate_samples
from bench.eval.real_features import real_features
from bench.schema import ENCODERS
from tests.conftest import tiny_config
from tests.encoder_fixtures import VIT

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


def _ct(*args, **kwargs) -> float:
    return copying.data_copying(*args, **kwargs)[schema.COPYING]


def test_the_copying_statistic_on_synthetic_features():
    train, test = _features(3000, 6, seed=6), _features(600, 6, seed=7)
    copied = train[:600]
    fresh = _features(600, 6, seed=8)
    noisy = train[600:1200] + 0.5 * _features(600, 6, seed=9)
    blurred = train[600:1200] + 1.5 * _features(600, 6, seed=9)
    assert _ct(copied, train, test, cells=10) < -5  # every copied distance is 0: U = 0 per cell
    assert abs(_ct(fresh, train, test, cells=10)) < 3
    assert _ct(noisy, train, test, cells=10) > -3  # noisy copies: not flagged
    assert _ct(blurred, train, test, cells=10) > 3  # further from the training data: underfitting


def _authors_c_t(test, test_cells, gen, gen_cells, train, train_cells, tau):
    """Meehan et al.'s C_T written from their published code (github.com/casey-meehan/data-copying): sklearn's
    nearest neighbours among the training points *of the cell*, scipy's one-sided Mann-Whitney U of the generated
    distances, z-scored with their continuity correction; cells with a share of generated samples above tau,
    weighted by the test share."""
    from scipy.stats import mannwhitneyu
    from sklearn.neighbors import NearestNeighbors

    m, n, k = len(gen), len(test), int(train_cells.max()) + 1
    z = np.zeros(k)
    for i in range(k):
        p, q, t = test[test_cells == i], gen[gen_cells == i], train[train_cells == i]
        if len(q) == 0 or len(p) == 0:
            continue
        nn = NearestNeighbors(n_neighbors=1).fit(t)
        lq, lp = nn.kneighbors(q)[0][:, 0], nn.kneighbors(p)[0][:, 0]
        u = mannwhitneyu(lq, lp, alternative="less").statistic
        mean = len(p) * len(q) / 2 - 0.5
        z[i] = (u - mean) / np.sqrt(len(p) * len(q) * (len(p) + len(q) + 1) / 12)
    q_share = np.bincount(gen_cells, minlength=k) / m
    p_share = np.bincount(test_cells, minlength=k) / n
    keep = q_share > tau
    return p_share[keep] @ z[keep] / p_share[keep].sum(), int(keep.sum()), p_share[keep].sum()


def test_the_copying_statistic_equals_the_authors_code():
    """C_T against an independent implementation of Meehan et al.'s code (sklearn's nearest neighbours within each
    cell, scipy's Mann-Whitney U, their continuity correction and τ = 20/m), on the same k-means cells, with
    m = n: the larger side is subsampled to the smaller one. The distances to the nearest training point of the
    whole set (instead of the cell), or no continuity correction, give a different number."""
    train, test = _features(3000, 6, seed=6), _features(500, 6, seed=7)
    generated = train[600:1400] + 0.7 * _features(800, 6, seed=9)  # 800 generated vs 500 test: subsampled to 500
    cells, seed = 10, 3
    reference = copying.copying_reference(train, test, cells, seed)
    ours = copying.data_copying(generated, train, test, cells=cells, seed=seed)
    g = torch.Generator().manual_seed(seed)  # the subsets data_copying draws (documented: seeded, sorted)
    pick_gen = torch.randperm(len(generated), generator=g)[:500].sort().values
    # (all 500 test images are kept: the smaller side is subsampled to its own size, i.e. not at all)
    gen = generated[pick_gen].numpy()
    gen_cells = metrics.nearest_centre(generated[pick_gen], reference["centres"]).numpy()
    expected, used, share = _authors_c_t(
        test.numpy(), reference["test_cell"].numpy(), gen, gen_cells, train.numpy(), reference["train_cell"].numpy(),
        tau=20 / 500,
    )  # fmt: skip
    assert ours[schema.COPYING] == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert ours[schema.COPYING_CELLS] == used and ours[schema.COPYING_TEST_SHARE] == pytest.approx(share)
    assert ours[schema.COPYING_SAMPLES] == 500
    # the reading the issue found: nearest training point in the whole set, no continuity correction
    from scipy.spatial import cKDTree

    whole = cKDTree(train.numpy())
    lq, lp = whole.query(gen)[0], whole.query(test.numpy())[0]
    test_cells = reference["test_cell"].numpy()
    zs, ws = [], []
    for c in range(cells):
        q, p = lq[gen_cells == c], lp[test_cells == c]
        if len(q) > 20 and len(p):
            u = (q[:, None] > p[None, :]).sum() + 0.5 * (q[:, None] == p[None, :]).sum()
            zs.append((u - len(q) * len(p) / 2) / np.sqrt(len(q) * len(p) * (len(q) + len(p) + 1) / 12))
            ws.append(len(p))
    assert abs(np.average(zs, weights=ws) - ours[schema.COPYING]) > 0.05
    # computed once per reference (the suite's cache), the model's half gives the same number
    assert copying.data_copying(generated, train, test, cells, seed, reference) == ours


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


def test_memorisation_is_flagged_for_copied_training_images_only(domain_cache):
    """The check through the real pipeline (digits, domain features, `bench eval`'s scoring): a "model" that returns
    training images verbatim is flagged; one that returns held-out test images is not; a noisy one is not."""
    cfg = dataclasses.replace(tiny_config().suite("quick").eval, num_samples=300, kid_subset_size=100)
    digits = load("digits", validation=cfg.validation_images)  # the suite's data: its domain encoder is cached
    cache = domain_cache / "cache"
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


def _dgm_eval_dinov2(state: dict, images: torch.Tensor) -> torch.Tensor:
    """FD_DINOv2's features written from dgm-eval's and Meta's published code, sharing nothing with genbench: each
    image through PIL (converted to RGB, resized to 224×224 with PIL's bicubic, 8-bit), /255, ImageNet
    normalisation (dgm-eval's DINOv2Encoder.transform); then Meta's ViT forward from the raw checkpoint: patch
    embedding, CLS token, positional embeddings interpolated from 37×37 with scale factor (16 + 0.1)/37, bicubic, no
    antialias (DinoVisionTransformer.interpolate_pos_encoding), pre-norm blocks with LayerScale, final norm, CLS."""
    import torch.nn.functional as F
    from PIL import Image

    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    pixels = []
    for array in images[:, 0].numpy():
        image = Image.fromarray(array, mode="L").convert("RGB").resize((224, 224), Image.Resampling.BICUBIC)
        pixels.append(((np.asarray(image) / 255.0 - mean) / std).transpose(2, 0, 1))
    x = torch.tensor(np.stack(pixels), dtype=torch.float32)
    w = {k: v.float() for k, v in state.items()}
    dim, heads = w["cls_token"].shape[-1], 6
    with torch.no_grad():
        t = F.conv2d(x, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
        t = torch.cat([w["cls_token"].expand(len(t), -1, -1), t], dim=1)
        m = int(round((w["pos_embed"].shape[1] - 1) ** 0.5))
        grid = w["pos_embed"][:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=(16.1 / m, 16.1 / m), mode="bicubic", antialias=False)
        t = t + torch.cat([w["pos_embed"][:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)], dim=1)
        n, length = t.shape[:2]
        for b in range(sum(k.endswith(".attn.qkv.weight") for k in w)):
            p = f"blocks.{b}."
            h = F.layer_norm(t, (dim,), w[p + "norm1.weight"], w[p + "norm1.bias"], eps=1e-6)
            qkv = F.linear(h, w[p + "attn.qkv.weight"], w[p + "attn.qkv.bias"])
            q, k, v = qkv.reshape(n, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
            attention = (q * (dim // heads) ** -0.5 @ k.transpose(-2, -1)).softmax(-1)
            h = F.linear((attention @ v).transpose(1, 2).reshape(n, length, dim), w[p + "attn.proj.weight"],
                         w[p + "attn.proj.bias"])  # fmt: skip
            t = t + w[p + "ls1.gamma"] * h
            h = F.layer_norm(t, (dim,), w[p + "norm2.weight"], w[p + "norm2.bias"], eps=1e-6)
            h = F.linear(F.gelu(F.linear(h, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"])), w[p + "mlp.fc2.weight"],
                         w[p + "mlp.fc2.bias"])  # fmt: skip
            t = t + w[p + "ls2.gamma"] * h
        return F.layer_norm(t, (dim,), w["norm.weight"], w["norm.bias"], eps=1e-6)[:, 0].double()


def test_dinov2_features_are_dgm_evals_on_the_same_weights(dinov2_s_weights, monkeypatch):
    """genbench's FD_DINOv2 encoder (weights found through BENCH_DINOV2_WEIGHTS, loaded by the real code) against an
    independent implementation of dgm-eval's pipeline and Meta's model (`_dgm_eval_dinov2`) on real digits: the same
    CLS features to 1e-4 relative. The pipeline this replaced (torch's bicubic on float pixels, timm's one-time
    antialiased resampling of the positional embeddings) differs from it well beyond that."""
    import timm
    import torch.nn.functional as F
    import torchvision.transforms.functional as TF
    from timm.models.vision_transformer import checkpoint_filter_fn

    monkeypatch.setenv(DINOV2_ENV, str(dinov2_s_weights))
    digits = load("digits")
    ex = build_encoder("dinov2-vits14", digits, None, Path("unused"), torch.device("cpu"))
    assert ex.feature_dim == 384 and "PIL" in ex.resize and len(ex.weights_digest) == 64
    images = digits.test_images[:6]
    ours = ex(images, batch_size=4)["features"]
    assert ours.shape == (6, 384) and ours.std(0).mean() > 0.01  # the features depend on the image
    state = torch.load(dinov2_s_weights, weights_only=True)
    theirs = _dgm_eval_dinov2(state, images)
    scale = theirs.norm(dim=1, keepdim=True)
    assert ((ours - theirs).norm(dim=1, keepdim=True) / scale).max() < 1e-4
    # the other pipeline: float bicubic resize (overshooting [0, 1]) and timm's resampled positional embeddings
    ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224).eval()
    ref.load_state_dict(checkpoint_filter_fn(state, ref))
    x = F.interpolate(images.expand(-1, 3, -1, -1).float() / 255, size=(224, 224), mode="bicubic")
    with torch.no_grad():
        other = ref(TF.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])).double()
    assert ((other - theirs).norm(dim=1, keepdim=True) / scale).max() > 1e-3


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


@pytest.mark.xdist_group("ray")  # the session's `vit_run` is a Ray run: made in the worker that holds Ray
def test_a_suite_with_two_encoders_logs_both_under_distinct_names(vit_run, tmp_path):
    """An extra encoder, away from the driver: the worker (here the session's `vit_run`, a Ray task; a local worker
    process runs the same `run_detached_cell`) builds every encoder the cell needs (`Cell.encoders`) and scores the
    same samples in each. The real split features of the ViT are seeded into the cache under their real key (the
    suite's preflight would compute them for minutes on a CPU); the samples go through the real ViT in the worker. A
    worker that built only the first encoder fails the cell (KeyError)."""
    from bench import tracking
    from bench.report import files as report_files
    from bench.run import suite as runner

    uri, suite = vit_run["uri"], vit_run["suite"]
    runs = tracking.load_runs(uri, suite)
    run = runs[runs["bench.family"] == "vae"].iloc[0]
    assert run["status"] == "FINISHED", (run.get("bench.error"), vit_run["log"][-6:])
    assert run["bench.executor"] == "ray"  # a Ray worker process scored it, not the driver
    for base in ("fid", "kid_mean", "precision", "recall", "density", "coverage"):
        assert np.isfinite(run[f"metrics.{base}"]) and np.isfinite(run[f"metrics.{base}_dinov2_vits14"]), base
    for base in ("fid", "kid_mean"):
        assert run[f"metrics.{base}"] != run[f"metrics.{base}_dinov2_vits14"], base
    assert "metrics.is_mean_dinov2_vits14" not in run  # DINOv2 has no classifier: no Inception Score
    client = mlflow.MlflowClient(uri)
    proto = json.loads(Path(client.download_artifacts(run["run_id"], "protocol.json", str(tmp_path))).read_text())
    (part,) = proto["extra_encoders"]
    assert part["encoder"] == "dinov2-vits14" and len(part["weights_digest"]) == 64 and part["features_digest"]
    # one encoder alone is another protocol: another leaderboard table (this run under the default executor)
    single = tiny_config(*VIT[:-1], path=vit_run["config"], suite=suite)
    lines: list[str] = []
    results = vit_run["results"]
    runner.run_suite(single, suite, tracking_uri=uri, results=results, progress=False, echo=lines.append)
    cells = tracking.load_runs(uri, suite)
    cells = cells[cells["bench.family"] == "vae"]
    assert len(cells) == 2 and set(cells["status"]) == {"FINISHED"}, lines[-6:]
    assert len(set(cells["bench.protocol"])) == 2
    md = report_files.write_report(uri, suite, tmp_path / "r")["markdown"].read_text()
    assert "FD ↓ [dinov2-vits14]" in md and "coverage ↑ [dinov2-vits14]" in md
    assert "Encoders: every sample metric is computed in each encoder's features" in md
    assert "nearest training images" in md

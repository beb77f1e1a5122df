"""Shared fixtures: the repository's bench.toml shrunk with --set overrides to a CPU-seconds budget, and one
session-wide run of that tiny quick suite into a temporary MLflow store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from bench import config

REPO = Path(__file__).resolve().parents[1]
BENCH_TOML = REPO / "bench.toml"

TINY = (
    "train.steps=20",
    "train.batch_size=32",
    "train.log_every=10",
    "train.sample_every=10",
    "train.checkpoint_every=10",
    "eval.num_samples=200",
    "eval.kid_subset_size=100",
    "eval.kid_subsets=10",
    "eval.iwae_k=16",
    "eval.ais.images=8",
    "eval.ais.chains=2",
    "eval.ais.steps=10",
    "eval.ais.leapfrog=2",
    "eval.ais.validation_images=4",
    "eval.ais.validation_steps=5",
    "eval.ais.bdmc_images=2",
    "eval.ais.own_steps=20",
    "features.domain.steps=150",
    "features.domain.min_test_accuracy=0.5",
)

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("BENCH_OFFLINE", "1")  # tests never reach for the network


def wait_until(predicate, timeout: float, what: str):
    """Poll `predicate` until it returns something truthy (returned); fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.5)


def tiny_config(*extra: str) -> config.BenchConfig:
    return config.load(BENCH_TOML, TINY + extra, "quick")


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """The quick suite (digits × gan-mlp, vae-mlp × seeds 0, 1), tiny budget, into a fresh sqlite store."""
    from bench.run.suite import run_suite
    from bench.tracking import default_uri

    results = tmp_path_factory.mktemp("results")
    cfg = tiny_config()
    lines: list[str] = []
    outcomes = run_suite(cfg, "quick", results=results, overrides=TINY, progress=False, echo=lines.append)
    return {"results": results, "uri": default_uri(results), "outcomes": outcomes, "config": cfg, "log": lines}


def seed_cache(quick_run, results: Path) -> None:
    """The tiny recipe's domain encoder, already trained by the session's quick run (saves ~10 s per store)."""
    shutil.copytree(quick_run["results"] / "cache", results / "cache", dirs_exist_ok=True)


def bench_run(results: Path, *extra: str) -> subprocess.Popen:
    """`bench run` of the tiny quick suite with `extra` settings, as a user runs it (the console script), into
    `results`, in its own process group (so a test can kill the suite as a whole)."""
    bench = Path(sys.executable).parent / "bench"
    args = [str(bench), "run", "--config", str(BENCH_TOML), "--suite", "quick", "--no-progress"]
    for setting in TINY + extra:
        args += ["--set", setting]
    env = {**os.environ, "BENCH_RESULTS": str(results), "BENCH_OFFLINE": "1"}
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


RESUME = ("models=['gan-mlp']", "seeds=[0]", "train.steps=300", "train.checkpoint_every=50", "train.eval_every=100")


@pytest.fixture(scope="session")
def killed_and_resumed(quick_run, tmp_path_factory):
    """Issue 15's scenario, run once for the tests that look at it (tests/test_isolation.py checks the numbers,
    tests/test_browser.py the MLflow UI; neither writes into it): `bench run` of gan-mlp seed 0 for 300 steps is
    SIGKILLed as a whole (parent and worker) after its first checkpoint, then run again to the end."""
    results = tmp_path_factory.mktemp("killed")
    seed_cache(quick_run, results)
    proc = bench_run(results, *RESUME)
    checkpoints = results / "checkpoints"
    wait_until(lambda: any(checkpoints.glob("*/last.pt")), 120, "the first checkpoint")
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
    proc.wait(timeout=30)
    (last,) = checkpoints.glob("*/last.pt")
    step = torch.load(last, weights_only=False)["step"]
    again = bench_run(results, *RESUME)
    out, _ = again.communicate(timeout=300)
    return {"results": results, "killed_at": step, "returncode": again.returncode, "out": out}


@pytest.fixture(scope="session")
def dinov2_s_weights(tmp_path_factory) -> Path:
    """A randomly initialised DINOv2 ViT-S/14 saved as Meta releases it: positional embeddings for 518×518 and the
    mask token, in a .pth state dict. The real weights cannot be downloaded here."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0)  # 518×518, as released
    state = net.state_dict()
    for key in state:  # LayerScale starts at 1e-5, which would make the random features ignore the image
        if key.endswith(".gamma"):
            state[key] = torch.ones_like(state[key])
    state["mask_token"] = torch.zeros(1, net.num_features)
    path = tmp_path_factory.mktemp("dinov2") / "dinov2_vits14_pretrain.pth"
    torch.save(state, path)
    return path


class _Projection(torch.nn.Module):
    """A fixed random projection of 28×28 pixels to 384 features: stands in for the ViT where only the cache key
    matters."""

    def __init__(self, dim: int = 384):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(28 * 28, dim, generator=torch.Generator().manual_seed(5)))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": (x.flatten(1).float() / 255.0) @ self.w}


def seed_vit_features(results: Path) -> None:
    """The digits splits in dinov2-vits14 features, in `results`' cache under their real key (weights from
    $BENCH_DINOV2_WEIGHTS): a suite's preflight would spend minutes of a 2-core CPU computing them through the ViT;
    its cells' samples still go through the real ViT."""
    import dataclasses

    from bench.data import load
    from bench.eval.encoders import build_encoder
    from bench.eval.real_features import split_features

    digits = load("digits", validation=tiny_config().suite("quick").eval.validation_images)  # the suite's carve
    vit = build_encoder("dinov2-vits14", digits, None, results / "cache", torch.device("cpu"))
    for split in ("train", "test"):
        split_features(dataclasses.replace(vit, net=_Projection()), digits, split, results / "cache")


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> Path:
    """A randomly initialised state dict of torch-fidelity's inception-v3-compat, saved like the real weights file
    (which cannot be downloaded here). Convolutions get He init so activations keep their scale through the 90-odd
    layers (PyTorch's default init shrinks them to ~1e-8), and the classifier is scaled so the softmax is far from
    uniform and the Inception Score is not trivially 1."""
    from unittest import mock

    from torch_fidelity import feature_extractor_inceptionv3 as fi

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        with (
            mock.patch.object(fi, "load_state_dict_from_url", return_value={}),
            mock.patch.object(fi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None),
        ):
            net = fi.FeatureExtractorInceptionV3("random-inception", ["2048"])
        net.features_list = ["2048"]
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        # Random 2048-d features share a large common part, which would put every image in the same class: take
        # out of the classifier the direction of the mean features of a few noise images, then scale it up.
        noise = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
        common = net(noise)[0].mean(0, keepdim=True)  # (1, 2048)
        w = torch.randn(net.fc.weight.shape)
        w -= (w @ common.T) @ common / common.square().sum()
        net.fc.weight.copy_(5.0 * w)
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path


# ------------------------------------------------------------------ reading a store the tests wrote


def search(uri: str) -> pd.DataFrame:
    """mlflow.search_runs as a user would call it; set_tracking_uri also exports MLFLOW_TRACKING_URI, so restore."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=["quick"])
    finally:
        mlflow.set_tracking_uri(previous or "")
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


def child_runs(uri: str) -> pd.DataFrame:
    """The cell runs (not the parent, not the real-data reference)."""
    runs = search(uri)
    return runs[runs["tags.bench.cell"].notna() & (runs["tags.bench.family"] != "real")]


def real_runs(uri: str) -> pd.DataFrame:
    runs = search(uri)
    return runs[runs["tags.bench.family"] == "real"]

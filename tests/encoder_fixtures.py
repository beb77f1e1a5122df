"""Session fixtures of the heavier real components, a pytest plugin of tests/conftest.py: the local Ray instance,
the one cell scored in two encoders (the real DINOv2 ViT-S/14 with random weights) as a Ray task, and random-weight
DINOv2 and Inception weight files in the layouts their publishers release."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, seed_cache, suite_config, tiny_config


@pytest.fixture(scope="session")
def local_ray(tmp_path_factory, dinov2_s_weights):
    """A local Ray instance in this process (tests in the xdist group "ray" only), started as a user starts it:
    with the encoder weights' variable already set (Ray's worker processes take the environment of the moment Ray
    starts)."""
    ray = pytest.importorskip("ray", reason="the ray extra is installed by make test (pip install '.[ray]')")
    from bench.schema import ENCODERS

    weights = ENCODERS["dinov2"].weights.env
    previous = os.environ.get(weights)
    os.environ[weights] = str(dinov2_s_weights)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        log_to_driver=False,
        # this one-node instance shares two cores with the other xdist worker: Ray's default health check (5 missed
        # 3-s checks) declared its own raylet dead under that load; no node ever dies here, so give it 60 missed
        _system_config={"health_check_failure_threshold": 60},
    )
    yield ray
    ray.shutdown()
    if previous is None:
        os.environ.pop(weights, None)
    else:
        os.environ[weights] = previous


VIT = ("seeds=[0]", "models=['vae-mlp']", "eval.num_samples=400", 'eval.extra_encoders=["dinov2-vits14"]')


@pytest.fixture(scope="session")
def vit_run(domain_cache, local_ray, mlflow_server, dinov2_s_weights, tmp_path_factory):
    """One cell scored in two encoders, its 400 samples through the real DINOv2 ViT-S/14 (random weights) once for
    the session (~45-80 s of a 2-core CPU): vae-mlp seed 0 with `dinov2-vits14` as an extra encoder, as a Ray task
    logging to the session's `mlflow server` under the suite name "vit". Read by tests/test_ray.py (the Ray task
    builds every encoder the cell needs) and tests/test_encoders.py (both encoders' metrics under distinct names).
    The ViT's real-data features are seeded (`seed_vit_features`); the samples go through the real ViT."""
    from bench.run.suite import run_suite
    from bench.schema import ENCODERS

    results, suite = tmp_path_factory.mktemp("vit"), "vit"
    config = suite_config(results, suite)
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_CACHE", str(results / "cache"))  # its own: the seeded ViT features are no one else's
        seed_cache(domain_cache, results)
        seed_vit_features(results)
        mp.setenv(ENCODERS["dinov2"].weights.env, str(dinov2_s_weights))  # the driver's preflight finds them
        outcomes = run_suite(
            tiny_config(*VIT, path=config, suite=suite), suite, tracking_uri=mlflow_server, results=results,
            overrides=TINY + VIT, executor="ray", progress=False, echo=lines.append,
        )  # fmt: skip
    return {"uri": mlflow_server, "suite": suite, "config": config, "results": results, "log": lines,
            "statuses": [o.status for o in outcomes]}  # fmt: skip


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
    """The digits splits in dinov2-vits14 features, in `results / "cache"` under their real key (weights from
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

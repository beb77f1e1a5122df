"""The domain encoder (trained, cached, gated), the weights lookup and the cache of real split features."""

from __future__ import annotations

import dataclasses
import urllib.error

import pytest
import torch

from bench.config import DomainConfig
from bench.data import load
from bench.eval import encoders as features
from bench.eval import real_features
from bench.schema import INCEPTION_WEIGHTS

CPU = torch.device("cpu")
RECIPE = DomainConfig(steps=40, min_test_accuracy=0.3)


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def test_domain_encoder_is_cached_by_dataset_and_recipe(tmp_path, digits, monkeypatch):
    first = features.domain_encoder("domain", digits, RECIPE, tmp_path, CPU)
    assert 0.3 <= first.info["test_accuracy"] <= 1.0
    monkeypatch.setattr(features, "_train_domain", lambda *a: pytest.fail("retrained despite a cache hit"))
    again = features.domain_encoder("domain", digits, RECIPE, tmp_path, CPU)
    assert again.weights_digest == first.weights_digest
    # the gate is not part of the key; the recipe is
    features.domain_encoder("domain", digits, DomainConfig(steps=40, min_test_accuracy=0.1), tmp_path, CPU)
    with pytest.raises(pytest.fail.Exception):
        features.domain_encoder("domain", digits, DomainConfig(steps=41, min_test_accuracy=0.3), tmp_path, CPU)


def test_domain_encoder_is_deterministic(tmp_path, digits):
    a = features.domain_encoder("domain", digits, RECIPE, tmp_path / "a", CPU)
    b = features.domain_encoder("domain", digits, RECIPE, tmp_path / "b", CPU)
    assert a.weights_digest == b.weights_digest


def test_domain_encoder_floor(tmp_path, digits):
    with pytest.raises(features.EncoderError, match=r"below the floor 0.99 \(\[features.domain\] min_test_accuracy\)"):
        features.domain_encoder("domain", digits, DomainConfig(steps=2, min_test_accuracy=0.99), tmp_path, CPU)


def test_features_are_standardised_on_the_training_split(tmp_path, digits):
    ex = features.domain_encoder("domain", digits, RECIPE, tmp_path, CPU)
    f = ex(digits.train_images)["features"]
    assert f.shape == (len(digits.train_images), RECIPE.feature_dim)
    assert torch.allclose(f.mean(0), torch.zeros(RECIPE.feature_dim, dtype=f.dtype), atol=1e-3)


def test_split_features_cache_is_keyed(tmp_path, digits, monkeypatch):
    ex = features.domain_encoder("domain", digits, RECIPE, tmp_path, CPU)
    train = real_features.split_features(ex, digits, "train", tmp_path)
    test = real_features.split_features(ex, digits, "test", tmp_path)
    assert not train.cached and not test.cached
    assert len(train.features["features"]) == 1437 and len(test.features["features"]) == 360
    assert train.digest != test.digest and train.path != test.path
    saved = torch.load(train.path, weights_only=True)
    assert saved["key"] == real_features.split_key(ex, digits, "train")  # the key is inside the file
    assert saved["value"]["features"]["features"].dtype == torch.float32  # fp32 features stored losslessly as fp32
    calls = []
    original = ex.__call__
    monkeypatch.setattr(features.Encoder, "__call__", lambda self, *a, **k: calls.append(1) or original(*a, **k))
    hit = real_features.split_features(ex, digits, "train", tmp_path)
    assert hit.cached and not calls and hit.digest == train.digest
    for name, value in train.features.items():
        assert hit.features[name].dtype == torch.float64 and torch.equal(hit.features[name], value)

    # every part of the key leads to another file, recomputed: a stale hit is impossible by construction
    variants = {
        "weights": (dataclasses.replace(ex, weights_digest="another-digest"), digits, "train"),
        "preprocessing": (dataclasses.replace(ex, preprocessing="x/127.5-1"), digits, "train"),
        "resize": (dataclasses.replace(ex, resize="bilinear 32x32"), digits, "train"),
        "encoder": (dataclasses.replace(ex, name="other"), digits, "train"),
        "dataset digest": (ex, dataclasses.replace(digits, digest="0" * 64), "train"),
        "split": (ex, digits, "test"),
    }
    paths = {train.path}
    for part, args in variants.items():
        calls.clear()
        ref = real_features.split_features(*args, tmp_path)
        if part != "split":
            assert not ref.cached and calls, f"{part}: served from the cache"
        paths.add(ref.path)
    assert len(paths) == len(variants) + 1


def test_a_colliding_cache_file_is_never_served(tmp_path, digits):
    """A file under the right name whose stored key differs (a hash collision, a hand-copied file) is recomputed."""
    ex = features.domain_encoder("domain", digits, RECIPE, tmp_path, CPU)
    first = real_features.split_features(ex, digits, "test", tmp_path)
    saved = torch.load(first.path, weights_only=True)
    saved["key"]["dataset_digest"] = "forged"
    saved["value"]["features"]["features"] += 1.0
    torch.save(saved, first.path)
    again = real_features.split_features(ex, digits, "test", tmp_path)
    assert not again.cached and again.digest == first.digest
    assert torch.equal(again.features["features"], first.features["features"])


def test_inception_without_weights_offline_names_every_option(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_WEIGHTS.env, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty hub cache
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download offline"))
    with pytest.raises(features.EncoderError) as e:
        features.build_encoder("inception", load("digits"), RECIPE, tmp_path, CPU)
    message = str(e.value)
    for option in (
        "BENCH_INCEPTION_WEIGHTS=",
        str(tmp_path / "torch-home" / "hub" / "checkpoints"),
        "network",
        "--set eval.encoder=domain",
        "BENCH_OFFLINE=1",
    ):
        assert option in message


def test_inception_download_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv(INCEPTION_WEIGHTS.env, raising=False)
    monkeypatch.delenv("BENCH_OFFLINE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, dst, **kwargs):
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        assert url == INCEPTION_WEIGHTS.url == URL_INCEPTION_V3 and dst.endswith(INCEPTION_WEIGHTS.file)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(features.EncoderError, match=r"the download from https://.* failed \(URLError"):
        features.weights_path("inception")


def test_inception_weights_env_must_name_a_loadable_file(tmp_path, monkeypatch):
    monkeypatch.setenv(INCEPTION_WEIGHTS.env, str(tmp_path / "missing.pth"))
    with pytest.raises(features.EncoderError, match=r"BENCH_INCEPTION_WEIGHTS=.*missing.pth is not a file"):
        features.weights_path("inception")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    monkeypatch.setenv(INCEPTION_WEIGHTS.env, str(junk))
    with pytest.raises(features.EncoderError, match=r"cannot load Inception weights from .*junk.pth"):
        features.build_encoder("inception", load("digits"), RECIPE, tmp_path, CPU)


def test_inception_weights_from_the_hub_cache(tmp_path, monkeypatch, inception_weights):
    monkeypatch.delenv(INCEPTION_WEIGHTS.env, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    hub = tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS.file  # where torch-fidelity's own download puts it
    hub.parent.mkdir(parents=True)
    hub.symlink_to(inception_weights)
    assert features.weights_path("inception") == hub


def test_accuracy_floors_per_dataset(tmp_path):
    digits = load("digits")
    with pytest.raises(features.EncoderError, match=r"digits reaches .* below the floor 0.99"):
        features.domain_encoder(
            "domain", digits, DomainConfig(steps=2, min_test_accuracy={"digits": 0.99}), tmp_path, CPU
        )
    # a floor for another dataset does not gate this one (same recipe: the cached classifier is reused)
    ex = features.domain_encoder(
        "domain", digits, DomainConfig(steps=2, min_test_accuracy={"mnist": 0.99}), tmp_path, CPU
    )
    assert ex.info["test_accuracy"] < 0.99

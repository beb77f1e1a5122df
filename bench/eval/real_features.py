"""Real images in an encoder's features: what every evaluation under one (dataset, protocol, encoder) compares its
samples with, prepared once and handed to the evaluation as one bundle (`RealFeatures`).

- the reference split's features (`eval.reference_split`): what the sample metrics compare samples with;
- the held-out split's features (the other split): the real-data row and the copying test's held-out side;
- the validation split's features (carved out of the training split), in the selection encoder only: the periodic
  FID that selects the best checkpoint;
- the copying test's cells (k-means of the training features, the test features' cells and nearest distances).

Each is computed once per key and kept in the cache folder (`storage.cached`); a suite prepares them before its
cells start, so workers running side by side load them rather than each computing them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.config import EvalConfig
from bench.data import VALIDATION, Dataset
from bench.eval.copying import copying_reference
from bench.eval.encoders import Encoder
from bench.schema import SELECTION_ENCODER
from bench.storage import bytes_digest, cached, json_digest

COPYING_VERSION = 2  # bump when the copying test's model-independent half changes


@dataclass
class SplitFeatures:
    """The features of one real split, and where they came from."""

    features: dict[str, torch.Tensor]  # {"features": float64 (N, d), "logits": float64 (N, K)}
    digest: str  # sha256 of the features: the protocol's statistics digest
    cached: bool  # loaded from the cache (True) or computed now (False)
    seconds: float  # time to load or compute them
    path: Path


@dataclass
class RealFeatures:
    """One encoder's view of a dataset under one evaluation protocol."""

    encoder: Encoder
    reference: SplitFeatures  # eval.reference_split
    held_out: SplitFeatures  # eval.held_out_split
    copying: dict | None  # the copying test's cells (metrics.copying_reference); None where not scored
    copying_seconds: float = 0.0  # time to load or compute them
    validation: SplitFeatures | None = None  # the selection encoder's features of the validation split

    def split(self, name: str, cfg: EvalConfig) -> SplitFeatures:
        return self.reference if name == cfg.reference_split else self.held_out


def split_key(encoder: Encoder, dataset: Dataset, split: str) -> dict:
    """Everything the features of a split depend on; stored inside the cache file and hashed into its name."""
    return {
        "dataset": dataset.name,
        "dataset_digest": dataset.digest,
        "split": split,
        "encoder": encoder.name,
        "weights_digest": encoder.weights_digest,
        "preprocessing": encoder.preprocessing,
        "resize": encoder.resize,
    }


def split_features(encoder: Encoder, dataset: Dataset, split: str, cache_dir: Path, batch_size: int = 500):
    """Features of a real split, computed once per (dataset digest, split, encoder, weights, preprocessing, resize)
    and kept under `cache_dir` as features-<dataset>-<split>-<encoder>-<key hash>.pt. Stored as float32 when that is
    lossless (the encoders compute in fp32), which halves the file; returned as float64."""
    start = time.perf_counter()
    key = split_key(encoder, dataset, split)
    path = Path(cache_dir) / f"features-{dataset.name}-{split}-{encoder.name}-{json_digest(key)}.pt"

    def compute() -> dict:
        feats = encoder(dataset.split(split)[0], batch_size)
        digest = bytes_digest(feats[name].numpy().tobytes() for name in sorted(feats))
        return {"features": {name: _compact(value) for name, value in feats.items()}, "digest": digest}

    value, hit = cached(path, key, compute)
    feats = {name: values.double() for name, values in value["features"].items()}
    return SplitFeatures(feats, value["digest"], hit, time.perf_counter() - start, path)


def _compact(values: torch.Tensor) -> torch.Tensor:
    single = values.float()
    return single if torch.equal(single.double(), values) else values


def copying_cells(train: SplitFeatures, test: SplitFeatures, cfg: EvalConfig, cache_dir: Path) -> dict:
    """The model-independent half of the copying test (metrics.copying_reference), the same for every model of a
    suite: computed once per (train and test feature digests, cells, seed)."""
    key = {"train": train.digest, "test": test.digest, "cells": cfg.copying_cells, "seed": cfg.seed}
    key["version"] = COPYING_VERSION
    path = Path(cache_dir) / f"copying-{json_digest(key, 16)}.pt"
    train_f, test_f = train.features["features"], test.features["features"]
    value, _ = cached(path, key, lambda: copying_reference(train_f, test_f, cfg.copying_cells, cfg.seed))
    return value


def real_features(
    encoder: Encoder, dataset: Dataset, cfg: EvalConfig, cache_dir: Path, *, copying: bool = True
) -> RealFeatures:
    """The bundle of `encoder` for `dataset` under `cfg`, from the cache where it is there. `copying=False` for an
    encoder that only selects the best checkpoint (it scores no samples)."""
    reference = split_features(encoder, dataset, cfg.reference_split, cache_dir, cfg.batch_size)
    held_out = split_features(encoder, dataset, cfg.held_out_split, cache_dir, cfg.batch_size)
    bundle = RealFeatures(encoder, reference, held_out, None)
    if encoder.name == SELECTION_ENCODER and dataset.carved:
        bundle.validation = split_features(encoder, dataset, VALIDATION, cache_dir, cfg.batch_size)
    if copying:
        start = time.perf_counter()
        bundle.copying = copying_cells(bundle.split("train", cfg), bundle.split("test", cfg), cfg, cache_dir)
        bundle.copying_seconds = time.perf_counter() - start
    return bundle

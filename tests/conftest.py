"""Shared fixtures: the repository's bench.toml shrunk with --set overrides to a CPU-seconds budget, and one
session-wide run of that tiny quick suite into a temporary MLflow store."""

from __future__ import annotations

from pathlib import Path

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
    "features.domain.steps=150",
    "features.domain.min_test_accuracy=0.5",
)

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("BENCH_OFFLINE", "1")  # tests never reach for the network


def tiny_config(*extra: str) -> config.BenchConfig:
    return config.load(BENCH_TOML, TINY + extra, "quick")


@pytest.fixture(scope="session")
def quick_run(tmp_path_factory):
    """The quick suite (digits × gan-mlp, vae-mlp × seeds 0, 1), tiny budget, into a fresh sqlite store."""
    from bench.runner import run_suite
    from bench.tracking import default_uri

    results = tmp_path_factory.mktemp("results")
    cfg = tiny_config()
    lines: list[str] = []
    outcomes = run_suite(cfg, "quick", results=results, overrides=TINY, progress=False, echo=lines.append)
    return {"results": results, "uri": default_uri(results), "outcomes": outcomes, "config": cfg, "log": lines}

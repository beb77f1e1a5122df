"""The Ray executor on a local Ray instance: the same cells as the local executor, each a Ray task."""

from __future__ import annotations

import os

import pytest

from bench import tracking
from bench.config import ConfigError
from bench.run.executors import RayExecutor
from bench.run.suite import run_suite
from bench.schema import ENCODERS
from tests.conftest import TINY, child_runs, seed_cache, seed_vit_features, tiny_config


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory, dinov2_s_weights):
    """A local Ray instance, started as a user starts it: with the encoder weights' variable already set (Ray's
    worker processes take the environment of the moment Ray starts)."""
    ray = pytest.importorskip("ray", reason="the ray extra is installed by make test (pip install '.[ray]')")
    weights = ENCODERS["dinov2"].weights.env
    previous = os.environ.get(weights)
    os.environ[weights] = str(dinov2_s_weights)
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()
    if previous is None:
        os.environ.pop(weights, None)
    else:
        os.environ[weights] = previous


def test_quick_suite_on_local_ray_gives_the_local_executors_cells(quick_run, local_ray, tmp_path):
    seed_cache(quick_run, tmp_path)
    extra = ("seeds=[0, 1]",)
    outcomes = run_suite(
        tiny_config(*extra), "quick", results=tmp_path, overrides=TINY + extra, executor="ray", progress=False
    )
    assert sorted((o.cell.name, o.status) for o in outcomes) == sorted(
        (o.cell.name, o.status) for o in quick_run["outcomes"]
    )
    ray_runs = child_runs(tracking.default_uri(tmp_path))
    local_runs = child_runs(quick_run["uri"])
    assert set(ray_runs["tags.bench.cell"]) == set(local_runs["tags.bench.cell"])  # the same cells, by hash
    assert (ray_runs["tags.bench.executor"] == "ray").all() and (ray_runs["status"] == "FINISHED").all()
    assert ray_runs["metrics.fid"].notna().all() and ray_runs["metrics.elbo"].notna().sum() == 2


def test_remote_cluster_needs_a_tracking_server():
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match=r"remote Ray cluster .* --tracking-uri http://"):
        RayExecutor("ray://head:10001", "sqlite:////tmp/results/mlflow.db")


def test_ray_cells_log_to_a_tracking_server(quick_run, local_ray, dinov2_s_weights, tmp_path, monkeypatch):
    """The remote-cluster path (a server, since workers cannot reach a local sqlite file), on a local Ray, with an
    extra encoder: the Ray task builds every encoder the cell needs (`Cell.encoders`), as the driver does."""
    from tests.test_server import server_process

    monkeypatch.setenv(ENCODERS["dinov2"].weights.env, str(dinov2_s_weights))  # the driver's preflight finds them
    with server_process(tmp_path / "server") as uri:
        seed_cache(quick_run, tmp_path)
        seed_vit_features(tmp_path)
        extra = ("seeds=[0]", "models=['vae-mlp']", 'eval.extra_encoders=["dinov2-vits14"]', "eval.num_samples=400")
        outcomes = run_suite(
            tiny_config(*extra), "quick", tracking_uri=uri, results=tmp_path, overrides=TINY + extra,
            executor="ray", progress=False,
        )  # fmt: skip
        assert [o.status for o in outcomes] == ["FINISHED"]
        runs = tracking.load_runs(uri, "quick")
        cell = runs[runs["bench.executor"] == "ray"].iloc[0]
        assert cell["status"] == "FINISHED" and cell["bench.seed"] == "0" and cell["metrics.elbo"] < 0
        assert cell["metrics.fid_dinov2_vits14"] > 0 and cell["metrics.fid_dinov2_vits14"] != cell["metrics.fid"]

"""The Ray executor on a local Ray instance: the same cells as the local executor, each a Ray task."""

from __future__ import annotations

import pytest

from bench import tracking
from bench.config import ConfigError
from bench.run.executors import RayExecutor
from bench.run.suite import run_suite
from tests.conftest import TINY, child_runs, seed_cache, tiny_config


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray = pytest.importorskip("ray", reason="the ray extra is installed by make test (pip install '.[ray]')")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        _temp_dir=str(tmp_path_factory.mktemp("ray")),
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


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


def test_ray_cells_log_to_a_tracking_server(quick_run, local_ray, tmp_path):
    """The remote-cluster path (a server, since workers cannot reach a local sqlite file), on a local Ray."""
    from tests.test_server import server_process

    with server_process(tmp_path / "server") as uri:
        seed_cache(quick_run, tmp_path)
        extra = ("seeds=[0]", "models=['vae-mlp']")
        outcomes = run_suite(
            tiny_config(*extra), "quick", tracking_uri=uri, results=tmp_path, overrides=TINY + extra,
            executor="ray", progress=False,
        )  # fmt: skip
        assert [o.status for o in outcomes] == ["FINISHED"]
        runs = tracking.load_runs(uri, "quick")
        cell = runs[runs["bench.executor"] == "ray"].iloc[0]
        assert cell["status"] == "FINISHED" and cell["bench.seed"] == "0" and cell["metrics.elbo"] < 0

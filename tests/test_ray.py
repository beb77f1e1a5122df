"""The Ray executor on a local Ray instance: the same cells as the local executor, each a Ray task."""

from __future__ import annotations

import pytest

from bench import tracking
from bench.config import ConfigError
from bench.run.executors import RayExecutor
from bench.run.suite import run_suite
from tests.conftest import TINY, child_runs, seed_cache, tiny_config

# One Ray at a time on this machine: the two-node cluster's `ray stop --force` would end the session's Ray too.
pytestmark = pytest.mark.xdist_group("ray")


def test_quick_suite_on_local_ray_gives_the_local_executors_cells(quick_run, domain_cache, local_ray, tmp_path):
    seed_cache(domain_cache, tmp_path)
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


def test_ray_cells_log_to_a_tracking_server(vit_run):
    """The remote-cluster path (a server, since workers cannot reach a local sqlite file), on a local Ray, with an
    extra encoder: the Ray task builds every encoder the cell needs (`Cell.encoders`), as the driver does. The run
    is the session's `vit_run` (tests/test_encoders.py reads the same one: the ViT scores its samples once)."""
    assert vit_run["statuses"] == ["FINISHED"], vit_run["log"][-6:]
    runs = tracking.load_runs(vit_run["uri"], vit_run["suite"])
    cell = runs[runs["bench.executor"] == "ray"].iloc[0]
    assert cell["status"] == "FINISHED" and cell["bench.seed"] == "0" and cell["metrics.elbo"] < 0
    assert cell["metrics.fid_dinov2_vits14"] > 0 and cell["metrics.fid_dinov2_vits14"] != cell["metrics.fid"]

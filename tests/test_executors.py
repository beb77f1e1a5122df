"""Several cells per GPU (`--cells-per-gpu`): worker processes side by side, the same numbers as one at a time, the
aggregate throughput in the summary; and the executors' argument checks."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import pytest

from bench.config import ConfigError
from bench.run.executors import InlineExecutor, LocalExecutor
from bench.run.suite import aggregate_throughput, run_suite
from bench.tracking import default_uri
from tests.conftest import REPO, TINY, tiny_config


def test_two_cells_per_gpu_run_side_by_side_with_the_same_numbers(quick_run, tmp_path):
    lines: list[str] = []
    outcomes = run_suite(
        tiny_config(), "quick", results=tmp_path, overrides=TINY, progress=False, echo=lines.append, cells_per_gpu=2
    )
    assert [o.status for o in outcomes] == ["FINISHED"] * 4
    client = mlflow.MlflowClient(default_uri(tmp_path))
    exp = client.get_experiment_by_name("quick")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("bench.family") in ("gan", "vae")]
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:], strict=False)), f"no two cells overlapped: {spans}"
    # packing changes when a cell runs, not what it computes
    sequential = {o.cell.name: o.metrics for o in quick_run["outcomes"]}
    for o in outcomes:
        for key in ("fid", "kid_mean", "precision"):
            assert o.metrics[key] == pytest.approx(sequential[o.cell.name][key], rel=1e-3, abs=1e-6), (o.cell.name, key)
    (parent,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("bench.parent") == "true"]
    assert parent.data.params["cells_per_gpu"] == "2"
    assert parent.data.metrics["suite/cells_run"] == 4 and parent.data.metrics["suite/cells_per_hour"] > 0
    assert any("4 cells in" in line and "2 at a time" in line and "cells/hour" in line for line in lines), lines


def test_aggregate_throughput_counts_cells_run_and_images_trained():
    from bench.run.cell import Outcome

    cell = tiny_config().suite("quick")  # any object stands in for the cell here
    outcomes = [
        Outcome(cell, "FINISHED", metrics={"throughput/train_images_per_s": 100.0, "time/train_s": 10.0}),
        Outcome(cell, "FINISHED", metrics={"throughput/train_images_per_s": 50.0, "time/train_s": 4.0}),
        Outcome(cell, "FAILED"),
        Outcome(cell, "SKIPPED"),
    ]
    got = aggregate_throughput(outcomes, wall=20.0)
    assert got["suite/cells_run"] == 3 and got["suite/cells_per_hour"] == pytest.approx(3 * 3600 / 20)
    assert got["suite/train_images_per_s"] == pytest.approx((1000 + 200) / 20)
    assert aggregate_throughput([outcomes[3]], wall=20.0) == {}


def test_packing_arguments_are_checked():
    with pytest.raises(ConfigError, match="at least 1"):
        LocalExecutor(0)
    with pytest.raises(ConfigError, match="inline"):
        InlineExecutor(2)
    assert LocalExecutor(3).map(lambda j: j * 2, [1, 2, 3, 4]) == [2, 4, 6, 8]  # order kept


def test_cells_per_gpu_on_the_command_line():
    out = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--suite", "quick", "--cells-per-gpu", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "--cells-per-gpu" in out.stderr and "Traceback" not in out.stderr


def test_ray_packs_cells_as_fractional_gpus(monkeypatch):
    """On a cluster with GPUs each cell asks for 1/cells_per_gpu of one, and as many cells run at once as fit
    (a stand-in for Ray records the resources asked for; a task asking for a whole GPU per cell on a 1-GPU
    cluster would run one cell at a time)."""
    import types

    asked = []

    fake = types.SimpleNamespace(
        is_initialized=lambda: True,
        cluster_resources=lambda: {"GPU": 2.0, "CPU": 16.0},
        remote=lambda **resources: (asked.append(resources), lambda fn: fn)[1],
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    from bench.run.executors import RayExecutor

    executor = RayExecutor(None, "sqlite:///x.db", cells_per_gpu=4)
    assert executor.slots == 8
    executor.task(lambda spec: spec)
    assert asked == [{"num_gpus": 0.25, "num_cpus": 1, "max_retries": 3}]  # retried when its node dies
    assert RayExecutor(None, "sqlite:///x.db").slots == 2  # one cell per GPU by default


def test_the_cli_offers_exactly_the_registered_executors():
    """bench.config.EXECUTORS (the CLI's choices, torch-free) names the registry in bench.run.executors."""
    from bench import config
    from bench.run import executors

    assert tuple(executors.EXECUTORS) == config.EXECUTORS

"""Reliability of the runner with real processes: a cell's crash stays in its cell, a SIGKILLed suite resumes to
the same numbers, and SIGINT stops cleanly with a checkpoint."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from bench import tracking
from bench.run.suite import run_suite
from tests.conftest import TINY, bench_run, child_runs, search, seed_cache, tiny_config, wait_until


def _training_started(results: Path) -> bool:
    """A cell has trained some steps: its first periodic sample grid is on disk. Watching files, not the sqlite
    store, keeps the test from competing with the suite for the database lock."""
    return any((results / "artifacts").glob("*/*/artifacts/images/samples+step+*.png"))


def _running_worker(uri: str, model: str) -> int | None:
    """The pid of the worker process running `model`'s cell, once its run is RUNNING."""
    if not Path(uri.removeprefix("sqlite:///")).is_file():
        return None
    try:
        runs = tracking.load_runs(uri, "quick")
    except tracking.TrackingError:  # the store is being created (migrations) by the suite's process
        return None
    if runs.empty or "bench.pid" not in runs:
        return None
    live = runs[(runs["status"] == "RUNNING") & (runs["bench.model"] == model) & runs["bench.pid"].notna()]
    pids = [int(p) for p in live["bench.pid"] if int(p) != os.getpid()]
    return pids[0] if pids else None


def test_a_crash_or_divergence_stays_in_its_cell(domain_cache, tmp_path):
    """gan-mlp seed 0's worker is SIGKILLed mid-training (as the out-of-memory killer would), vae-mlp diverges
    (lr 1e30): both are FAILED with the reason, and gan-mlp seed 1 still finishes."""
    seed_cache(domain_cache, tmp_path)
    extra = ("seeds=[0, 1]", "train.steps=400", "train.checkpoint_every=100", "models.vae-mlp.lr=1e30")
    uri = tracking.default_uri(tmp_path)
    outcome: dict = {}

    def suite():
        outcome["cells"] = run_suite(
            tiny_config(*extra), "quick", results=tmp_path, overrides=TINY + extra, progress=False, echo=print
        )

    thread = threading.Thread(target=suite)
    thread.start()
    wait_until(lambda: _training_started(tmp_path), 120, "gan-mlp seed 0's first sample grid")
    pid = wait_until(lambda: _running_worker(uri, "gan-mlp"), 30, "gan-mlp's worker")
    time.sleep(1.0)
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive()
    statuses = {(o.cell.model, o.cell.seed): o.status for o in outcome["cells"]}
    assert statuses == {
        ("gan-mlp", 0): "FAILED",
        ("gan-mlp", 1): "FINISHED",
        ("vae-mlp", 0): "FAILED",
        ("vae-mlp", 1): "FAILED",
    }
    runs = child_runs(uri).set_index("tags.mlflow.runName")
    assert runs.loc["gan-mlp/digits/seed0", "tags.bench.error"].startswith(
        "the cell's worker process was killed by SIGKILL"
    )
    assert runs.loc["vae-mlp/digits/seed0", "tags.bench.error"].startswith("DivergenceError: training diverged")
    assert runs.loc["gan-mlp/digits/seed1", "status"] == "FINISHED"
    # a worker runs cell after cell, but never on after a failure: every cell after a FAILED one has a fresh process
    pid = runs["tags.bench.pid"].astype(int)
    assert pid["gan-mlp/digits/seed1"] != pid["gan-mlp/digits/seed0"]
    assert pid["vae-mlp/digits/seed1"] != pid["vae-mlp/digits/seed0"]
    client = mlflow.MlflowClient(uri)
    error = Path(
        client.download_artifacts(runs.loc["gan-mlp/digits/seed0", "run_id"], "error.txt", str(tmp_path))
    ).read_text()
    assert "SIGKILL" in error


def test_sigkill_mid_suite_then_resume_gives_the_uninterrupted_numbers(killed_and_resumed, uninterrupted):
    killed, whole = killed_and_resumed["results"], uninterrupted  # the same cell, killed and resumed / never stopped
    step, out = killed_and_resumed["killed_at"], killed_and_resumed["out"]
    checkpoints = killed / "checkpoints"
    assert 50 <= step < 300
    assert killed_and_resumed["returncode"] == 0, out
    assert "left RUNNING by a process that no longer exists: marked KILLED" in out
    assert f"resumed from its checkpoint at step {step}" in out
    runs = child_runs(tracking.default_uri(killed))
    assert list(runs["status"]) == ["FINISHED"]  # one run per cell: the resume continued the interrupted run
    done = runs.iloc[0]
    assert int(done["tags.bench.resumed_from_step"]) == step and done["tags.bench.resumes"] == "1"
    assert pd.isna(done.get("tags.bench.error"))
    # its curves are continuous from the start: what was logged before the kill stays in the same run
    client = mlflow.MlflowClient(tracking.default_uri(killed))
    fid_steps = sorted({m.step for m in client.get_metric_history(done["run_id"], "periodic/fid")})
    assert fid_steps == [100, 200, 300], fid_steps
    loss_steps = sorted({m.step for m in client.get_metric_history(done["run_id"], "train/d_loss")})
    assert loss_steps == list(range(10, 301, 10)), loss_steps
    images = [a.path for a in client.list_artifacts(done["run_id"], "images") if a.path.endswith(".png")]
    assert sorted({int(p.split("+step+")[1].split("+")[0]) for p in images}) == list(range(10, 301, 10))
    uninterrupted = child_runs(tracking.default_uri(whole)).iloc[0]
    for metric in ("fid", "kid_mean", "is_mean", "precision", "recall", "best/fid", "best/step"):
        assert done[f"metrics.{metric}"] == uninterrupted[f"metrics.{metric}"], metric
    assert not any(checkpoints.glob("*/last.pt"))  # the finished run holds its checkpoints


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda pid: os.killpg(pid, signal.SIGINT), id="ctrl-c"),  # Ctrl-C reaches the whole group
        pytest.param(lambda pid: os.kill(pid, signal.SIGTERM), id="sigterm-to-bench"),  # `kill PID`: bench only
    ],
)
def test_sigint_or_sigterm_stops_cleanly_with_a_checkpoint(domain_cache, tmp_path, stop):
    seed_cache(domain_cache, tmp_path)
    settings = ("models=['gan-mlp']", "seeds=[0]", "train.steps=2000", "train.checkpoint_every=5000")
    proc = bench_run(tmp_path, *settings)
    uri = tracking.default_uri(tmp_path)

    wait_until(lambda: _training_started(tmp_path), 120, "the first sample grid")
    stop(proc.pid)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out
    checkpoints = list((tmp_path / "checkpoints").glob("*/last.pt"))
    assert len(checkpoints) == 1, out
    step = torch.load(checkpoints[0], weights_only=True)["step"]
    assert 0 < step < 2000  # written at the interrupt, not on the 5000-step schedule
    runs = search(uri)
    cell = runs[runs["tags.bench.model"] == "gan-mlp"].iloc[0]
    parent = runs[runs["tags.bench.parent"] == "true"].iloc[0]
    assert cell["status"] == "KILLED" and parent["status"] == "KILLED"
    assert f"at step {step}" in cell["tags.bench.error"]

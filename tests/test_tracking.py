"""bench/tracking.py on its own: system metrics per run, reopening an interrupted cell's run, the server preflight."""

from __future__ import annotations

import time

import mlflow
import pytest

from bench import tracking
from tests.conftest import search
from tests.test_ui import http_stub


@pytest.fixture
def tracker(tmp_path):
    return tracking.Tracker(tracking.default_uri(tmp_path), "quick", tmp_path / "artifacts")


def test_system_metrics_are_logged_while_the_block_runs(tracker):
    run = tracker.start_run("cell", {"bench.cell": "abc"})
    with run.system_metrics(tracker.uri, interval=0.2):
        time.sleep(1.5)
    run.end()
    metrics = mlflow.MlflowClient(tracker.uri).get_run(run.run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0
    assert metrics["system/system_memory_usage_megabytes"] > 0


def test_reopen_continues_only_an_unfinished_run_of_the_same_cell(tracker):
    run = tracker.start_run("cell", {"bench.cell": "abc", "bench.seed": 0})  # an int, as the runner passes
    run.set_tags({"bench.error": "interrupted"})
    run.end("KILLED")
    assert tracker.reopen_run(run.run_id, "other-cell") is None
    again = tracker.reopen_run(run.run_id, "abc")
    assert again is not None and again.run_id == run.run_id
    info = mlflow.MlflowClient(tracker.uri).get_run(run.run_id)
    assert info.info.status == "RUNNING" and info.data.tags["bench.resumes"] == "1"
    assert "bench.error" not in info.data.tags and info.data.tags["bench.seed"] == "0"
    again.end("KILLED")
    assert tracker.reopen_run(run.run_id, "abc") is not None  # a second resume counts 2
    assert mlflow.MlflowClient(tracker.uri).get_run(run.run_id).data.tags["bench.resumes"] == "2"
    run.end("FINISHED")
    assert tracker.reopen_run(run.run_id, "abc") is None  # finished runs are never reopened
    assert tracker.reopen_run("0" * 32, "abc") is None  # nor runs that do not exist


def test_any_http_answer_counts_as_reachable():
    with http_stub(401) as uri:  # an auth proxy in front of the server
        tracking.check_reachable(uri)
    start = time.perf_counter()
    with pytest.raises(tracking.TrackingError, match="no answer within 5s"):
        tracking.check_reachable("http://127.0.0.1:9")
    assert time.perf_counter() - start < 6
    tracking.check_reachable("sqlite:///nowhere.db")  # embedded stores need no check


def test_a_lost_race_on_the_dataset_row_is_retried(tmp_path, monkeypatch):
    """Two cells starting at once (Ray) can both insert the dataset's row into sqlite; the loser's UNIQUE-constraint
    error is retried, and its run still gets the dataset input (a fresh-clone Ray test once lost a cell to it)."""
    from mlflow.exceptions import MlflowException

    tracker = tracking.Tracker(tracking.default_uri(tmp_path), "race", tmp_path / "artifacts")
    run = tracker.start_run("cell", {})
    real, calls = run.client.log_inputs, []

    def lose_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, ...")
        return real(*args, **kwargs)

    monkeypatch.setattr(run.client, "log_inputs", lose_once)
    run.log_dataset("digits", "d" * 64, "sklearn")
    assert len(calls) == 2
    inputs = run.client.get_run(run.run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["digits"]
    monkeypatch.setattr(run.client, "log_inputs", lambda *a, **k: (_ for _ in ()).throw(MlflowException("other")))
    with pytest.raises(MlflowException, match="other"):
        run.log_dataset("digits", "d" * 64, "sklearn")


def test_runs_carry_mlflow_provenance_and_the_parent_its_description(quick_run):
    runs = search(quick_run["uri"])
    for tag in ("tags.mlflow.user", "tags.mlflow.source.name", "tags.mlflow.source.git.commit"):
        assert runs[tag].notna().all(), tag
    parent = runs[runs["tags.bench.parent"] == "true"].iloc[0]
    note = parent["tags.mlflow.note.content"]
    assert note.startswith("**quick**: Offline smoke benchmark") and "overrides: `--set train.steps=20`" in note

"""The team path: a real `mlflow server` process over HTTP (not the embedded sqlite store). Its REST client takes
only string tag and param values, which the sqlite store does not check: the quick suite crashed on `bench.seed`
there before every value was made a string in bench/tracking.py."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import mlflow
import pytest
import torch
from click.testing import CliRunner

from bench import schema, tracking
from bench.cli import main
from tests.components import SERVER_ENV, RunsCode, free_port, server_command, wait_healthy
from tests.conftest import (
    REPO,
    RESUME,
    RESUME_THREADS,
    TINY,
    bench_run,
    seed_cache,
    suite_config,
    wait_until,
)


def test_quick_suite_and_report_against_a_tracking_server(mlflow_server, domain_cache, tmp_path, monkeypatch):
    server, suite = mlflow_server, "server-quick"  # the quick suite under its own experiment on the shared server
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    seed_cache(domain_cache, tmp_path)  # the domain encoder is not what is under test here
    config = str(suite_config(tmp_path, suite))
    args = ["run", "--suite", suite, "--config", config, "--tracking-uri", server, "--no-progress"]
    result = CliRunner().invoke(main, [*args, *(a for t in TINY for a in ("--set", t))])
    assert result.exit_code == 0, result.output
    assert "done: 4 finished, 0 skipped (already finished), 0 failed" in result.output
    client = mlflow.MlflowClient(server)
    exp = client.get_experiment_by_name(suite)
    cells = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("bench.family") in ("gan", "vae")]
    assert sorted(r.data.tags["bench.seed"] for r in cells) == ["0", "0", "1", "1"]
    assert all(r.info.status == "FINISHED" and r.data.metrics["fid"] > 0 for r in cells)
    # the artifacts went through the server's proxy
    assert "samples/final.png" in {f.path for f in client.list_artifacts(cells[0].info.run_id, "samples")}
    report = CliRunner().invoke(
        main, ["report", "--suite", suite, "--config", config, "--tracking-uri", server, "--out", str(tmp_path / "r")]
    )
    assert report.exit_code == 0, report.output
    assert "gan-mlp" in (tmp_path / "r" / "leaderboard.md").read_text()
    # a remote store keeps each cell's resumable checkpoint where every node reaches it (one machine's files do not)
    from bench import schema, tracking
    from bench.run import checkpoints

    cell = cells[0]
    assert schema.RESUME_ARTIFACT in {f.path for f in client.list_artifacts(cell.info.run_id, "resume")}
    tracker = tracking.Tracker(server, suite, tmp_path / "artifacts")
    client.set_terminated(cell.info.run_id, "KILLED")  # as a dead node leaves it (after its lease expired)
    local = tmp_path / "elsewhere" / "last.pt"
    assert tracker.shared_checkpoint(cell.data.tags["bench.cell"], local) == cell.info.run_id
    state = checkpoints.read(local)  # weights-only: the format genbench writes loads without unpickling code
    assert state["run_id"] == cell.info.run_id and state["step"] == 20
    # anyone who reaches the server can replace that file: one that would run code is refused, never loaded, and
    # the cell trains again from step 0 on the next `bench run` (another node: no local files)
    marker = tmp_path / "ran"
    planted = tmp_path / "planted" / "last.pt"
    planted.parent.mkdir()
    torch.save({**state, "hook": RunsCode(marker)}, planted)
    client.log_artifact(cell.info.run_id, str(planted), "resume")
    from bench.storage import file_digest

    # ... and its digest tag too (the digests catch uploads cut short, not someone with write access)
    client.set_tag(cell.info.run_id, schema.RESUME_SHA256, file_digest(planted))
    node = tmp_path / "node-c"
    seed_cache(domain_cache, node)
    again = CliRunner().invoke(
        main, [*args, *(a for t in TINY for a in ("--set", t))], env={"BENCH_RESULTS": str(node)}
    )
    assert again.exit_code == 0, again.output
    assert "done: 1 finished, 3 skipped (already finished), 0 failed" in again.output
    refused = f"run {cell.info.run_id}'s resume/last.pt in the tracking store: refused: loading it would run code"
    assert refused in again.output and "the cell starts from step 0" in again.output
    assert not marker.exists()


def test_a_cell_moved_to_another_node_resumes_from_the_checkpoint_in_the_store(
    mlflow_server, domain_cache, tmp_path, capsys
):
    """What a Ray retry on another node meets (the first node died after its last checkpoint): the driver's
    RUNNING run and no local files at all. `run_detached_cell` finds the run's checkpoint in the server's artifact
    store, resumes from its step instead of training again, counts the resume and finishes the run."""
    from bench import schema
    from bench.run.executors import run_detached_cell
    from bench.run.matrix import expand
    from tests.conftest import tiny_config

    server, suite = mlflow_server, "server-moved"  # its own experiment on the shared server
    path = suite_config(tmp_path, suite)
    settings = ("models=['vae-mlp']", "seeds=[0]", "train.steps=30", "train.checkpoint_every=10")
    config = tiny_config(*settings, path=path, suite=suite)
    (cell,) = expand(config, config.suite(suite))
    first = tmp_path / "node-a"
    seed_cache(domain_cache, first)
    args = ["run", "--suite", suite, "--tracking-uri", server, "--no-progress", "--config", str(path)]
    result = CliRunner().invoke(
        main, [*args, *(a for t in (*TINY, *settings) for a in ("--set", t))], env={"BENCH_RESULTS": str(first)}
    )
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(server)
    exp = client.get_experiment_by_name(suite).experiment_id
    (run,) = [r for r in client.search_runs([exp]) if r.data.tags.get("bench.family") == "vae"]
    assert schema.RESUME_ARTIFACT in {a.path for a in client.list_artifacts(run.info.run_id, "resume")}
    client.update_run(run.info.run_id, status="RUNNING")  # as the driver holds it while Ray retries the task
    client.set_tag(run.info.run_id, schema.ATTEMPT, "dispatch-1")  # what the first attempt of the task wrote
    second = tmp_path / "node-b"  # another machine: no checkpoint; the domain encoder's cache only
    seed_cache(domain_cache, second)
    spec = {"cell": cell, "key": run.data.tags[schema.CELL], "run_id": run.info.run_id, "uri": server,
            "results": str(second), "device": "cpu", "progress": False, "label": "[1/1]", "threads": 1,
            "attempt": "dispatch-1"}  # fmt: skip
    capsys.readouterr()
    threads = torch.get_num_threads()
    try:
        out = run_detached_cell(spec)  # sets this process's torch threads, as a worker does
    finally:
        torch.set_num_threads(threads)
    assert out["status"] == "FINISHED", out
    said = capsys.readouterr().out
    assert "its checkpoint from the tracking store" in said and "retried after its node or worker died" in said
    after = client.get_run(run.info.run_id)
    assert after.info.status == "FINISHED" and after.data.tags[schema.RESUMES] == "1"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [10, 20, 30]  # trained once: the retry resumed at step 30 and only evaluated


def test_a_tracking_server_down_for_20_s_in_the_middle_of_a_cell_loses_nothing(domain_cache, tmp_path, monkeypatch):
    """The server stopped for 20 s while a cell trains, then started again on the same port and store: MLflow's
    client retries with backoff (about 4 minutes by default), so the cell waits at its next logging call and goes
    on; the suite finishes, and every metric of the cell is there: one train/loss per logging step, the final
    evaluation, the models."""
    root, port = tmp_path / "server", free_port()  # its own server: this test stops it (the only private one)
    root.mkdir()
    command = server_command(root, port)
    uri = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(command, env=SERVER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        wait_healthy(proc, uri)
        return proc

    server = start()
    results = tmp_path / "results"
    seed_cache(domain_cache, results)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    suite = bench_run(results, "models=['gan-mlp']", "seeds=[0]", "train.steps=400", "train.log_every=50")
    try:
        client = mlflow.MlflowClient(uri)

        def training() -> bool:
            exp = client.get_experiment_by_name("quick")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            cell = [r for r in runs if r.data.tags.get("bench.model") == "gan-mlp"]
            return bool(cell) and bool(client.get_metric_history(cell[0].info.run_id, "train/d_loss"))

        wait_until(training, 300, "the cell's first logged losses")
        os.killpg(server.pid, signal.SIGKILL)  # down, as a crashed or restarted server is
        server.wait(timeout=30)
        time.sleep(20)
        server = start()
        out = suite.communicate(timeout=900)[0]
        assert suite.returncode == 0, out[-3000:]
        assert "done: 1 finished" in out
        exp = client.get_experiment_by_name("quick")
        (cell,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("bench.model") == "gan-mlp"]
        assert cell.info.status == "FINISHED" and cell.data.metrics["fid"] > 0
        steps = [m.step for m in client.get_metric_history(cell.info.run_id, "train/d_loss")]
        assert steps == list(range(50, 401, 50))  # no logging step missing, none twice
        assert cell.data.tags.get("bench.model_id.final")
    finally:
        if suite.poll() is None:
            os.killpg(suite.pid, signal.SIGKILL)
        os.killpg(server.pid, signal.SIGTERM)


@pytest.mark.long  # MLflow's client retries for about 4 minutes: the outage must outlast them (`make test-long`)
def test_a_server_away_longer_than_the_retries_stops_the_suite_and_the_next_run_resumes(
    domain_cache, uninterrupted, tmp_path, monkeypatch
):
    """The server killed after the cell's first checkpoint and kept away past MLflow's retries: `bench run` exits
    with 1 within the retry window plus a minute, with one line that says the server stopped answering and where the
    checkpoint is, and writes nothing after it. With the server back, the same `bench run` resumes the cell: one
    FINISHED run whose FID equals an uninterrupted run's."""
    root, port = tmp_path / "server", free_port()
    root.mkdir()
    uri = f"http://127.0.0.1:{port}"

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(server_command(root, port), env=SERVER_ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        wait_healthy(proc, uri)
        return proc

    server = start()
    results = tmp_path / "results"
    seed_cache(domain_cache, results)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    suite = bench_run(results, *RESUME, threads=RESUME_THREADS)
    try:
        wait_until(lambda: any((results / "checkpoints").glob("*/last.pt")), 300, "the first checkpoint")
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)
        gone = time.monotonic()
        out = suite.communicate(timeout=600)[0]
        took = time.monotonic() - gone
        assert suite.returncode == 1, out[-3000:]
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"the tracking server at {uri} stopped answering" in errors[0], out[-3000:]
        assert "run the same command once the server is back" in errors[0] and "Traceback" not in out
        assert took < 300 + 60, took  # MLflow's retries (about 4 minutes), then a minute at most
        assert any((results / "checkpoints").glob("*/last.pt"))  # kept for the resume
        server = start()
        again = bench_run(results, *RESUME, threads=RESUME_THREADS)
        out = again.communicate(timeout=600)[0]
        assert again.returncode == 0 and "done: 1 finished" in out, out[-3000:]
        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("quick")
        cells = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("bench.model") == "gan-mlp"]
        assert [r.info.status for r in cells] == ["FINISHED"] and cells[0].data.tags.get(schema.RESUMES) == "1"
        reference = mlflow.MlflowClient(tracking.default_uri(uninterrupted))
        (ref,) = reference.search_runs([reference.get_experiment_by_name("quick").experiment_id],
                                       "tags.`bench.model` = 'gan-mlp'")  # fmt: skip
        assert cells[0].data.metrics["fid"] == pytest.approx(ref.data.metrics["fid"], rel=1e-9)
    finally:
        for proc in (suite, server):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)

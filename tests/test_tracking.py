"""bench/tracking.py on its own: system metrics per run, reopening an interrupted cell's run, the server preflight."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest

from bench import tracking
from tests.conftest import search
from tests.test_ui import http_stub


@pytest.fixture
def tracker(tmp_path):
    return tracking.Tracker(tracking.default_uri(tmp_path), "quick", tmp_path / "artifacts")


def test_system_metrics_are_logged_while_the_block_runs(tracker):
    run = tracker.start_run("cell", {"bench.cell": "abc"})
    with run.system_metrics(interval=0.2):
        time.sleep(1.5)
    client = mlflow.MlflowClient(tracker.uri)
    metrics = client.get_run(run.run_id).data.metrics
    assert metrics["system/cpu_utilization_percentage"] >= 0
    assert metrics["system/system_memory_usage_megabytes"] > 0
    first = [m.step for m in client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")]
    assert first == list(range(len(first))) and len(first) >= 3
    # a resumed attempt continues the steps; a lost lease stops the sampler before its next sample
    with run.system_metrics(resume=True, interval=0.2):
        time.sleep(0.7)
    steps = [m.step for m in client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")]
    assert sorted(steps) == list(range(len(steps))) and len(steps) > len(first)
    with run.system_metrics(resume=True, interval=0.2, fence=lambda: "another process took the cell over"):
        time.sleep(0.7)
    assert len(client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")) == len(steps)
    run.end()


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
    """Two cells starting at once (Ray) can both insert the dataset's row; the loser's error is retried by its code
    (BAD_REQUEST: MLflow's SQL stores report an IntegrityError so, and a server passes the code on, whatever the
    database says in words), and its run still gets the dataset input (a fresh-clone Ray test once lost a cell to
    it). Another error is raised."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST, TEMPORARILY_UNAVAILABLE

    tracker = tracking.Tracker(tracking.default_uri(tmp_path), "race", tmp_path / "artifacts")
    run = tracker.start_run("cell", {})
    real, calls = run.client.log_inputs, []

    def lose_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise MlflowException("(psycopg2.errors.UniqueViolation) duplicate key value", error_code=BAD_REQUEST)
        return real(*args, **kwargs)

    monkeypatch.setattr(run.client, "log_inputs", lose_once)
    run.log_dataset("digits", "d" * 64, "sklearn")
    assert len(calls) == 2
    inputs = run.client.get_run(run.run_id).inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == ["digits"]

    def down(*args, **kwargs):
        raise MlflowException("the store is down", error_code=TEMPORARILY_UNAVAILABLE)

    monkeypatch.setattr(run.client, "log_inputs", down)
    with pytest.raises(MlflowException, match="the store is down"):
        run.log_dataset("digits", "d" * 64, "sklearn")


def test_runs_carry_mlflow_provenance_and_the_parent_its_description(quick_run):
    runs = search(quick_run["uri"])
    for tag in ("tags.mlflow.user", "tags.mlflow.source.name", "tags.mlflow.source.git.commit"):
        assert runs[tag].notna().all(), tag
    parent = runs[runs["tags.bench.parent"] == "true"].iloc[0]
    note = parent["tags.mlflow.note.content"]
    assert note.startswith("**quick**: Offline smoke benchmark") and "overrides: `--set train.steps=20`" in note


@pytest.mark.parametrize("name", ["sngan", "wgan-gp", "conv-vae"])
def test_every_kind_of_baseline_is_logged_as_a_model_that_loads_and_samples_the_same(tracker, name):
    """A cell logs its model (a LoggedModel "final"): torch cannot pickle a parametrised module (sngan's spectral
    norm), so the logged copy carries the weights the parametrisation computes. It samples as the trained model
    does, and its discriminator scores as the original's in eval mode; the trained model keeps its
    parametrisation."""
    import torch
    from torch.nn.utils import parametrize

    import baselines

    torch.manual_seed(0)
    model = baselines.build(name, None, (1, 28, 28))
    x = torch.rand(4, 1, 28, 28)
    if name == "sngan":
        model.train()
        for _ in range(3):  # power iterations move u, v away from their initial values
            model.discriminator(x)
    model.eval()
    run = tracker.start_run("cell", {"bench.cell": name})
    model_id = run.log_model(model, "final", {"bench.model": name}, step=7)
    run.end()
    mlflow.set_tracking_uri(tracker.uri)  # MLflow's own loader, as an MLflow user loads the logged model
    try:
        loaded = mlflow.pytorch.load_model(f"models:/{model_id}", map_location="cpu")
    finally:
        mlflow.set_tracking_uri(None)

    logged = mlflow.MlflowClient(tracker.uri).get_logged_model(model_id)
    assert logged.source_run_id == run.run_id and logged.name == "final" and "READY" in str(logged.status)
    assert logged.tags.get("bench.model") == name  # the Models tab filters by the cell's tags
    # what a user installs to load it: torch alone (the model zoo travels with the model as code)
    folder = Path(logged.artifact_location.removeprefix("file://"))
    requirements = (Path(folder) / "requirements.txt").read_text().split()
    assert [r.split("==")[0] for r in requirements if not r.startswith("mlflow")] == ["torch"], requirements
    assert (Path(folder) / "code" / "baselines" / "__init__.py").is_file()
    expected = model.sample(6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded.sample(6, generator=torch.Generator().manual_seed(1)), expected)
    if model.family == "gan":
        with torch.no_grad():
            assert torch.allclose(loaded.discriminator(x), model.discriminator(x), atol=1e-5, rtol=1e-4)
    parametrised = [m for m in model.modules() if parametrize.is_parametrized(m)]
    assert bool(parametrised) == (name == "sngan")  # the trained model keeps its parametrisations
    if parametrised:
        assert not any(parametrize.is_parametrized(m) for m in loaded.modules())
        model.train()
        model.discriminator(x)  # and still trains: its class still has the parametrised weight


def test_bench_sample_rebuilds_the_model_from_weights_and_refuses_a_checkpoint_that_would_run_code(tracker, tmp_path):
    """`bench sample` never unpickles the run's MLflow model: it rebuilds the model from the registry and the run's
    weights-only checkpoints/final.pt (the same samples as the trained model). A final.pt planted in the store that
    would run code when unpickled (here: create a file) is refused with one line naming it, and runs nothing."""
    import numpy as np
    import torch
    from click.testing import CliRunner

    import baselines
    from bench import schema
    from bench.cli import main
    from bench.eval.pipeline import generate
    from bench.run import checkpoints
    from tests.components import RunsCode

    torch.manual_seed(0)
    model = baselines.build("sngan", None, (1, 28, 28)).eval()  # a parametrised model: spectral norm
    cell = {"cell": {"suite": "quick", "model": "sngan", "dataset": "digits", "seed": 0}, "model": {}}
    good = tracker.start_run("cell", {"bench.cell": "good"})
    checkpoints.log(good, checkpoints.final_state(model, cell, 7, (1, 28, 28), "bernoulli", ""), "final.pt")
    good.end()
    uri = ["--tracking-uri", tracker.uri]
    out = tmp_path / "s.npy"
    result = CliRunner().invoke(main, ["sample", good.run_id, "-n", "16", "--seed", "3", "--out", str(out), *uri])
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(out), generate(model, 16, 500, 3).numpy())

    marker = tmp_path / "ran"
    planted = tmp_path / "final.pt"
    torch.save({"model": {}, "config": cell, "hook": RunsCode(marker)}, planted)
    evil = tracker.start_run("cell", {"bench.cell": "evil"})
    evil.log_file(planted, schema.CHECKPOINTS_DIR)
    evil.end()
    result = CliRunner().invoke(main, ["sample", evil.run_id, "--out", str(tmp_path / "e.png"), *uri])
    assert result.exit_code == 2  # bench's usage error: what was given cannot be used
    (line,) = result.output.strip().splitlines()
    assert f"run {evil.run_id}'s checkpoints/final.pt: refused: loading it would run code" in line, line
    assert "it imports io.open" in line
    assert not marker.exists() and not (tmp_path / "e.png").exists()


def test_a_shared_checkpoint_is_verified_and_the_newest_copy_wins(tmp_path):
    """What a cell shares for other nodes (resume/last.pt and resume/best.pt, their sha256 and step as tags): a node
    without a copy gets both; a node with a newer copy keeps its own, one with an older copy gets the store's; a
    stored file that does not match its digest (an upload cut short) is refused and the local file left as it was."""
    import torch

    from bench import schema
    from bench.run import checkpoints
    from bench.storage import atomic_save

    tracker = tracking.Tracker(tracking.default_uri(tmp_path), "quick", tmp_path / "artifacts")
    run = tracker.start_run("cell", {schema.CELL: "k1"})
    weights = torch.nn.Linear(2, 2).state_dict()

    def save(path, step):
        atomic_save({"model": weights, "step": step}, path)

    shared = tmp_path / "node-a" / "last.pt"
    save(shared, 200), save(shared.with_name("best.pt"), 150)
    run.log_resume_checkpoint(shared, 200)
    local = tmp_path / "node-b" / "last.pt"
    assert tracker.shared_checkpoint("k1", local, newer_than=checkpoints.step_of(local)) == run.run_id
    assert checkpoints.step_of(local) == 200 and checkpoints.step_of(local.with_name("best.pt")) == 150
    save(local, 300)  # this node got further than the store's copy
    assert tracker.shared_checkpoint("k1", local, newer_than=checkpoints.step_of(local)) is None
    assert checkpoints.step_of(local) == 300
    save(local, 100)  # an older copy: the store's wins
    assert tracker.shared_checkpoint("k1", local, newer_than=checkpoints.step_of(local)) == run.run_id
    assert checkpoints.step_of(local) == 200
    save(local, 100)
    run.set_tags({schema.RESUME_SHA256: "0" * 64})  # the digest of a file that never arrived whole
    with pytest.raises(tracking.TrackingError, match="does not match the sha256"):
        tracker.shared_checkpoint("k1", local, newer_than=checkpoints.step_of(local))
    assert checkpoints.step_of(local) == 100

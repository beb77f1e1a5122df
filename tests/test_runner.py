"""End to end: the tiny quick suite into a fresh MLflow store — the run layout, skipping, failure isolation, the
best checkpoint, AIS, colour cells."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import baselines
from bench import schema, tracking
from bench.cli import main
from bench.report import files as report_files
from bench.run.suite import run_suite
from tests.conftest import REPO, TINY, child_runs, real_runs, tiny_config

CHILD_TAGS = (
    "bench.suite",
    "bench.model",
    "bench.family",
    "bench.dataset",
    "bench.seed",
    "bench.cell",
    "bench.protocol",
)
SAMPLE_METRICS = ("fid", "fid_inf", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall")


def test_four_finished_child_runs_with_the_design_layout(quick_run):
    assert [o.status for o in quick_run["outcomes"]] == ["FINISHED"] * 4
    runs = child_runs(quick_run["uri"])
    assert len(runs) == 4 and set(runs["status"]) == {"FINISHED"}
    for tag in CHILD_TAGS:
        assert runs[f"tags.{tag}"].notna().all(), tag
    assert sorted(runs["tags.mlflow.runName"]) == [
        "gan-mlp/digits/seed0",
        "gan-mlp/digits/seed1",
        "vae-mlp/digits/seed0",
        "vae-mlp/digits/seed1",
    ]
    assert runs["tags.mlflow.parentRunId"].nunique() == 1
    # the local executor's one worker process ran all four cells (none failed): one start-up, not four
    assert runs["tags.bench.pid"].nunique() == 1 and int(runs["tags.bench.pid"].iloc[0]) != os.getpid()
    assert runs["tags.bench.protocol"].nunique() == 1  # one protocol: one leaderboard table
    for m in SAMPLE_METRICS + ("time/train_s", "time/eval_s", "time/tracking_s", "throughput/train_images_per_s"):
        assert runs[f"metrics.{m}"].notna().all(), m
    vae = runs[runs["tags.bench.family"] == "vae"]
    assert (-vae["metrics.elbo"] >= vae["metrics.nll_iwae"]).all()
    assert ((vae["metrics.recon_ssim"] > 0) & (vae["metrics.recon_ssim"] <= 1) & (vae["metrics.recon_psnr"] > 0)).all()
    assert vae["metrics.elbo"].add(vae["metrics.rate"]).add(vae["metrics.distortion"]).abs().max() < 1e-6
    assert runs["params.train.steps"].eq("20").all() and runs["params.model.latent_dim"].notna().all()
    # the copying test's cells are computed once, by the suite, before any cell: the workers only load them
    log = quick_run["log"]
    ready = [i for i, line in enumerate(log) if line.startswith("copying-test cells of digits in domain features")]
    assert len(ready) == 1 and ready[0] < min(i for i, line in enumerate(log) if line.startswith("[1/4]")), log[:12]
    assert len(list(quick_run["cache"].glob("copying-*.pt"))) == 1
    # where each evaluation's time went: every phase timed, the phases within the whole (the GPU check's table)
    phases = ["time/eval_generate_s", "time/eval_features_s", "time/eval_sample_metrics_s", "time/ais_s"]
    for _, run in runs.iterrows():
        timed = phases + (["time/eval_likelihood_s"] if run["tags.bench.family"] == "vae" else [])
        assert all(run[f"metrics.{p}"] > 0 for p in timed), run[[f"metrics.{p}" for p in timed]]
        untimed = ("time/ais_select_s", "time/ais_bdmc_s", "time/ais_own_s")  # AIS's other parts, where a run has them
        present = [p for p in untimed if pd.notna(run.get(f"metrics.{p}"))]
        total = sum(run[f"metrics.{p}"] for p in timed + present)
        assert total <= run["metrics.time/eval_s"] <= total + 10.0, (total, run["metrics.time/eval_s"])
    assert runs.loc[runs["tags.bench.family"] == "gan", "metrics.time/eval_likelihood_s"].isna().all()
    # what a cell of each model cost, at the end of the run
    summary = log[log.index("time per cell (mean over the cells that ran now):") :]
    for model in ("gan-mlp", "vae-mlp"):
        cells = runs[runs["tags.bench.model"] == model]
        train = cells["metrics.time/train_s"].mean()
        line = next(line for line in summary if line.strip().startswith(model))
        assert "2 cell(s): training" in line and f"training {schema.seconds(train)}" in line, line


def test_best_is_selected_honestly_and_its_numbers_are_a_full_evaluation(quick_run, tmp_path):
    """The tiny config evaluates periodically only at its last step (eval_every 500 > 20 steps): best = final, and
    the final evaluation is reused, not repeated. Both claims are checked against the logged checkpoints: a fresh
    evaluation of best.pt reproduces best/*, and its periodic FID is recomputed from the selection rule (its own
    latent seed, the validation split carved from the training images), which differs from the FID of the scored
    latents and split."""

    from bench import schema
    from bench.data import load
    from bench.eval.encoders import build_encoder
    from bench.eval.metrics import fid
    from bench.eval.pipeline import evaluate, generate
    from bench.eval.real_features import real_features, split_features

    runs = child_runs(quick_run["uri"])
    assert runs["metrics.best/step"].eq(20).all() and runs["metrics.time/eval_best_s"].eq(0).all()
    assert not any((quick_run["results"] / "checkpoints").iterdir())  # no checkpoints left behind
    run = runs[runs["tags.bench.model"] == "gan-mlp"].iloc[0]
    client = mlflow.MlflowClient(quick_run["uri"])
    cfg, cache = quick_run["config"], quick_run["cache"]
    suite = cfg.suite("quick")
    best = torch.load(client.download_artifacts(run["run_id"], "checkpoints/best.pt", str(tmp_path)), weights_only=True)
    final = torch.load(
        client.download_artifacts(run["run_id"], "checkpoints/final.pt", str(tmp_path)), weights_only=True
    )
    assert all(torch.equal(best["model"][k], final["model"][k]) for k in final["model"])
    model = baselines.build("gan-mlp", cfg.models["gan-mlp"], (1, 28, 28))
    model.load_state_dict(best["model"])
    digits = load("digits", validation=suite.eval.validation_images)  # the suite's data: its carve
    domain = build_encoder("domain", digits, cfg.domain, cache, torch.device("cpu"))
    again = evaluate(model, digits, suite.eval, (real_features(domain, digits, suite.eval, cache),))
    for m in SAMPLE_METRICS:
        assert run[f"metrics.best/{m}"] == pytest.approx(again.metrics[m], rel=1e-9), m

    def periodic(seed: int, split: str) -> float:
        samples = generate(model, suite.train.eval_samples, suite.eval.batch_size, seed)
        real = split_features(domain, digits, split, cache).features["features"]
        return fid(domain(samples, suite.eval.batch_size)["features"], real)

    honest = periodic(suite.eval.seed + schema.SELECTION_SEED_OFFSET, "validation")
    assert run["metrics.best/periodic_fid"] == pytest.approx(honest, rel=1e-9)
    assert abs(periodic(suite.eval.seed, "train") - honest) > 1e-3  # the scored latents and split: another number
    proto = json.loads(Path(client.download_artifacts(run["run_id"], "protocol.json", str(tmp_path))).read_text())
    assert proto["best_checkpoint_selection"]["real_split"].startswith("validation: 300 training images carved out")
    # the validation split: carved out of the training images, disjoint from the train and test splits
    whole = load("digits").train_images
    parts = torch.cat([digits.validation_images, digits.train_images])
    assert len(digits.validation_images) == 300 and len(digits.train_images) == 1437 - 300
    assert sorted(bytes(x.numpy()) for x in parts) == sorted(bytes(x.numpy()) for x in whole)  # a partition
    assert proto["best_checkpoint_selection"]["latent_seed"] == suite.eval.seed + schema.SELECTION_SEED_OFFSET


@pytest.mark.integration  # a suite, its cells in worker processes
def test_best_checkpoint_gets_the_full_evaluation(tmp_path, monkeypatch):
    """Periodic FIDs 5, 2, 3, 4 at steps 5, 10, 15, 20: the step-10 checkpoint is the best one. Its best/* metrics
    must equal a full evaluation of the logged best.pt, and differ from the final ones."""

    from bench.eval import pipeline as evaluate_mod
    from bench.eval.encoders import build_encoder
    from bench.eval.pipeline import evaluate
    from bench.eval.real_features import real_features

    values = iter([5.0, 2.0, 3.0, 4.0])
    monkeypatch.setattr(evaluate_mod, "fid", lambda generated, real: next(values))  # the periodic FID only
    cfg = tiny_config("models=['gan-mlp']", "seeds=[0]", "train.eval_every=5")
    at_finished, end = [], tracking.Run.end

    def recording_end(self, status="FINISHED"):  # which local checkpoints exist when a cell's FINISHED is written
        if status == "FINISHED" and self.tag(schema.FAMILY) in ("gan", "vae"):  # a model's cell, not the data row
            at_finished.append(sorted(p.name for p in (tmp_path / "checkpoints").glob("*/*.pt")))
        return end(self, status)

    monkeypatch.setattr(tracking.Run, "end", recording_end)
    run_suite(cfg, "quick", results=tmp_path, progress=False, echo=lambda line: None, executor="inline")
    # nothing is deleted before FINISHED is recorded: an interruption until then resumes from them
    assert at_finished == [["best.pt", "last.pt"]] and not list((tmp_path / "checkpoints").glob("*/*.pt"))
    run = child_runs(tracking.default_uri(tmp_path)).iloc[0]
    assert run["metrics.best/step"] == 10 and run["metrics.best/periodic_fid"] == 2.0
    assert run["metrics.periodic/fid"] == 4.0  # the last value of the curve
    client = mlflow.MlflowClient(tracking.default_uri(tmp_path))
    curve = client.get_metric_history(run["run_id"], "periodic/fid")
    assert [(m.step, m.value) for m in curve] == [(5, 5.0), (10, 2.0), (15, 3.0), (20, 4.0)]
    assert {a.path for a in client.list_artifacts(run["run_id"], "checkpoints")} == {
        "checkpoints/best.pt",
        "checkpoints/final.pt",
    }
    assert "samples/best.png" in {a.path for a in client.list_artifacts(run["run_id"], "samples")}
    best = torch.load(client.download_artifacts(run["run_id"], "checkpoints/best.pt", str(tmp_path)), weights_only=True)
    assert best["step"] == 10
    suite = cfg.suite("quick")
    model = baselines.build("gan-mlp", cfg.models["gan-mlp"], (1, 28, 28))
    model.load_state_dict(best["model"])
    from bench.data import load

    digits = load("digits", validation=suite.eval.validation_images)
    encoder = build_encoder("domain", digits, cfg.domain, tmp_path / "cache", torch.device("cpu"))
    again = evaluate(model, digits, suite.eval, (real_features(encoder, digits, suite.eval, tmp_path / "cache"),))
    for m in SAMPLE_METRICS:
        assert run[f"metrics.best/{m}"] == pytest.approx(again.metrics[m], rel=1e-9), m
    assert run["metrics.best/fid"] != run["metrics.fid"]
    # eval.best_metrics = "sample" (the default): the best checkpoint's likelihood (AIS here) is not run again
    assert pd.notna(run["metrics.nll_ais"]) and pd.isna(run.get("metrics.best/nll_ais"))
    assert not any(k.startswith("metrics.best/ais") or k == "metrics.best/time/ais_s" for k in run.dropna().index)
    md = report_files.write_report(tracking.default_uri(tmp_path), "quick", tmp_path / "r", checkpoint="best")[
        "markdown"
    ]
    text = md.read_text()
    assert "Metrics of the best checkpoint, selected on periodic FID" in text
    assert "| best step (selected on periodic FID) |" in text
    assert f"{run['metrics.best/fid']:.2f}" in text and f"{run['metrics.fid']:.2f}" not in text.split("| gan-mlp")[1]


def test_artifacts_inputs_and_step_metrics(quick_run, tmp_path):
    client = mlflow.MlflowClient(quick_run["uri"])
    runs = child_runs(quick_run["uri"])
    for _, row in runs.iterrows():
        run_id = row["run_id"]
        names = {a.path for a in client.list_artifacts(run_id)}
        assert {"config.toml", "protocol.json", "environment.json", "samples", "checkpoints"} <= names
        samples = {a.path for a in client.list_artifacts(run_id, "samples")}
        assert {"samples/final.png"} <= samples
        # the periodic grids as MLflow images by step (log_image key/step): the UI's image slider
        images = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
        assert sorted(int(p.split("+step+")[1].split("+")[0]) for p in images if "samples+step+" in p) == [10, 20]
        assert client.get_run(run_id).data.tags.get("mlflow.loggedImages") == "True"
        assert ("reconstructions.png" in names) == (row["tags.bench.family"] == "vae")
        local = Path(client.download_artifacts(run_id, "protocol.json", str(tmp_path)))
        protocol = json.loads(local.read_text())
        assert protocol["encoder"] == "domain" and protocol["num_samples"] == 200
        assert protocol["reference"]["split"] == "train" and len(protocol["reference"]["dataset_digest"]) == 64
        history = client.get_metric_history(run_id, "fid")
        assert len(history) == 1
        train_metric = "train/d_loss" if row["tags.bench.family"] == "gan" else "train/loss"
        assert [m.step for m in client.get_metric_history(run_id, train_metric)] == [10, 20]
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert inputs[0].dataset.name == "digits" and len(inputs[0].dataset.digest) > 8


def test_ais_log_likelihood_of_gans_and_vaes(quick_run, tmp_path):
    """Both families get nll_ais (tiny AIS: 8 test images, 2 chains, 10 distributions), bits/dim on the 0–255 scale,
    the σ chosen on the validation images, the BDMC bounds and the cost; the validation scores are an artifact."""
    client = mlflow.MlflowClient(quick_run["uri"])
    runs = child_runs(quick_run["uri"])
    assert set(runs["tags.bench.family"]) == {"gan", "vae"}
    for m in ("nll_ais", "bits_per_dim_ais", "ais/sigma", "ais/accept", "ais/bdmc_gap", "time/ais_s"):
        assert runs[f"metrics.{m}"].notna().all(), m
    assert "metrics.best/nll_ais" not in runs  # eval.best_metrics = "sample": the best checkpoint has no likelihood
    # a code length: a probability of 8-bit images (NLL ≥ 0), bits per pixel = NLL / (D ln 2)
    assert runs["metrics.nll_ais"].gt(0).all()
    bpd = runs["metrics.nll_ais"] / (28 * 28 * math.log(2))
    assert (bpd - runs["metrics.bits_per_dim_ais"]).abs().max() < 1e-9 and bpd.lt(8).all()
    # the VAE's AIS under its own (Bernoulli) model against its IWAE bound on the same images, checked in every run:
    # the tag says "violated" exactly when AIS falls below IWAE by more than 3 standard errors (at this tiny budget,
    # 10 distributions and 2 chains, it does: the check is what tells a user the budget is too small)
    vae, gan = runs[runs["tags.bench.family"] == "vae"], runs[runs["tags.bench.family"] == "gan"]
    assert gan["metrics.ais_own/gap"].isna().all() and vae["metrics.ais_own/gap"].notna().all()
    violated = vae["metrics.ais_own/gap"] < -3 * vae["metrics.ais_own/gap_stderr"]
    assert (vae["tags.bench.ais_check"].str.startswith("violated") == violated).all()
    assert (vae["tags.bench.ais_check"][~violated] == "ok").all()
    own = vae["metrics.ais_own/nll"] - vae["metrics.ais_own/iwae_nll"] + vae["metrics.ais_own/gap"]
    assert own.abs().max() < 1e-6
    assert runs["metrics.ais/sigma"].isin([0.025, 0.05, 0.1, 0.2, 0.4]).all()  # the quick suite's grid
    gap = runs["metrics.ais/bdmc_upper"] - runs["metrics.ais/bdmc_lower"]
    assert (gap - runs["metrics.ais/bdmc_gap"]).abs().max() < 1e-6 and gap.gt(0).all()  # 10 distributions: loose
    assert runs["metrics.ais/accept"].between(0, 1).all() and runs["metrics.time/ais_s"].gt(0).all()
    for run_id, sigma in zip(runs["run_id"], runs["metrics.ais/sigma"], strict=True):
        details = json.loads(Path(client.download_artifacts(run_id, "ais.json", str(tmp_path))).read_text())
        scores = {float(k): v for k, v in details["validation"].items()}
        assert set(scores) == {0.025, 0.05, 0.1, 0.2, 0.4} and max(scores, key=scores.get) == sigma
        protocol = json.loads(Path(client.download_artifacts(run_id, "protocol.json", str(tmp_path))).read_text())
        assert protocol["likelihood_ais"]["images"] == 8 and protocol["likelihood_ais"]["chains"] == 2


def test_ais_images_beyond_the_test_split_fail_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    result = CliRunner().invoke(main, ["run", "--suite", "quick", "--set", "eval.ais.images=350"])
    assert result.exit_code == 2, result.output
    assert (
        "eval.ais.images (350) + eval.ais.validation_images (25) exceed the 360 test images of digits" in result.output
    )
    assert "training" not in result.output and not (tmp_path / "mlflow.db").exists()


def test_second_run_skips_finished_cells(quick_run):
    lines = []
    outcomes = run_suite(
        quick_run["config"], "quick", results=quick_run["results"], overrides=TINY, progress=False, echo=lines.append
    )
    assert [o.status for o in outcomes] == ["SKIPPED"] * 4
    assert len(child_runs(quick_run["uri"])) == 4
    assert len(real_runs(quick_run["uri"])) == 1  # the real-data reference is not logged twice either
    assert any("already FINISHED" in line for line in lines)


@pytest.mark.integration  # a suite, its cells in worker processes
def test_failing_cell_is_recorded_and_the_suite_goes_on(tmp_path, monkeypatch):
    def explode(self, x, optimizers):
        raise RuntimeError("boom in train_step")

    monkeypatch.setattr(baselines.MODELS["gan-mlp"], "train_step", explode)
    extra = ("seeds=[0]",)
    outcomes = run_suite(
        tiny_config(*extra),
        "quick",
        results=tmp_path,
        overrides=TINY + extra,
        progress=False,
        echo=lambda s: None,
        executor="inline",  # the patch lives in this process
    )
    assert [(o.cell.model, o.status) for o in outcomes] == [("gan-mlp", "FAILED"), ("vae-mlp", "FINISHED")]
    uri = tracking.default_uri(tmp_path)
    runs = child_runs(uri)
    failed = runs[runs["status"] == "FAILED"].iloc[0]
    assert failed["tags.bench.error"] == "RuntimeError: boom in train_step"
    client = mlflow.MlflowClient(uri)
    assert (
        "boom in train_step"
        in Path(client.download_artifacts(failed["run_id"], "error.txt", str(tmp_path))).read_text()
    )
    md = report_files.write_report(uri, "quick", tmp_path / "report")["markdown"].read_text()
    assert "| vae-mlp | 1 |" in md and "gan-mlp" not in md.split("## digits")[1].split("\n\n1 cell")[0]
    assert "1 cell run(s) FAILED" in md


@pytest.mark.integration  # a suite, its cells in worker processes
def test_colour_cells_run_end_to_end_with_the_discrete_8bit_likelihood(tmp_path, monkeypatch):
    """A 3×32×32 dataset (CIFAR-10's pickles, random content) through the runner: a conv GAN and a conv VAE, the
    VAE scored with the discretised-logistic decoder the dataset prescribes."""
    import pickle

    import numpy as np

    from bench import data
    from tests.test_data import FixtureCIFAR10

    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", 60) for i in range(1, 6)] + [("test_batch", 80)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    monkeypatch.setitem(data.TORCHVISION, "cifar10", FixtureCIFAR10)
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "data"))

    extra = (
        "datasets=['cifar10']",
        "models=['dcgan', 'conv-vae']",
        "seeds=[0]",
        "train.steps=3",
        "features.domain.min_test_accuracy=0.0",  # random labels: the encoder cannot be accurate here
        "eval.likelihood_images=20",
        "eval.validation_images=100",  # of the fixture's 300 training images
    )
    outcomes = run_suite(
        tiny_config(*extra),
        "quick",
        results=tmp_path / "r",
        overrides=extra,
        progress=False,
        echo=lambda s: None,
        executor="inline",  # the CIFAR-10 fixture is patched into this process
    )
    assert [(o.cell.model, o.status) for o in outcomes] == [("dcgan", "FINISHED"), ("conv-vae", "FINISHED")]
    vae = outcomes[1].metrics
    assert vae["bits_per_dim"] == pytest.approx(vae["nll_iwae"] / (3072 * np.log(2)))
    # untrained: logistic scale ≈ 1 on the [0, 1] pixel range, so an interior bin gets ≈ pdf/255 ≈ 1/1000 of the mass:
    # a little worse than uniform over 256 values (8 bits); a proper discrete probability either way
    assert 8.0 < vae["bits_per_dim"] < 10.5
    client = mlflow.MlflowClient(tracking.default_uri(tmp_path / "r"))
    proto = json.loads(Path(client.download_artifacts(outcomes[1].run_id, "protocol.json", str(tmp_path))).read_text())
    observed = proto["likelihood"].pop("observed_digest")
    assert proto["likelihood"] == {
        "split": "test",
        "images": 20,
        "iwae_k": 16,
        "observation": "discretized-logistic",
        "observed": "8-bit values at the bin centres",
    }
    assert len(observed) == 16


def test_real_data_reference_row(quick_run):
    real = real_runs(quick_run["uri"])
    assert len(real) == 1 and real["status"].iloc[0] == "FINISHED"
    row = real.iloc[0]
    assert row["tags.bench.dataset"] == "digits" and row["tags.mlflow.runName"] == "real-data/digits"
    # same protocol as the models it is shown with
    assert row["tags.bench.protocol"] == child_runs(quick_run["uri"])["tags.bench.protocol"].iloc[0]
    # digits' 360 test images vs its train split: a small but positive floor, the real data's IS well above 1
    assert row["metrics.eval/generated_images"] == 200  # eval.num_samples of the tiny suite
    assert 0 < row["metrics.fid"] < 5 and row["metrics.is_mean"] > 3
    assert 0.5 < row["metrics.precision"] <= 1 and 0.5 < row["metrics.recall"] <= 1
    assert any(line.startswith("real data digits: FID floor") for line in quick_run["log"])


def test_every_logged_name_is_declared_in_the_schema(quick_run):
    """Every metric, tag and artifact the quick suite logged (its cells, the real-data row, the parent run) is a
    name of bench.schema, or under one of its declared prefixes: no module writes an MLflow name of its own."""
    from bench import schema

    names = {v for v in vars(schema).values() if isinstance(v, str)} | set(schema.LEADERBOARD)

    def metric_declared(key: str) -> bool:
        if key.startswith((schema.TRAIN_PREFIX, schema.SYSTEM_PREFIX)):  # the model's losses; MLflow's monitor
            return True
        if key in names:
            return True
        key = key.removeprefix(schema.BEST_PREFIX)  # best/<metric>: the best checkpoint's evaluation
        return key in names or schema.base_metric(key) in names

    folders = (schema.CHECKPOINTS_DIR, schema.MODEL_FINAL, schema.MODEL_BEST, f"images/{schema.SAMPLES_BY_STEP}")
    folders += (schema.REPORT_DIR,)  # `bench report` attaches its files to the parent run
    client = mlflow.MlflowClient(quick_run["uri"])
    runs = client.search_runs([client.get_experiment_by_name("quick").experiment_id])
    kinds = {run.data.tags.get("bench.family", "parent") for run in runs}
    assert kinds >= {"gan", "vae", "real", "parent"} and len(runs) >= 6  # the cells, the real-data row, the parent
    undeclared = set()
    for run in runs:
        undeclared |= {f"metric {k}" for k in run.data.metrics if not metric_declared(k)}
        undeclared |= {f"tag {k}" for k in run.data.tags if not (k in names or k.startswith("mlflow."))}
        pending = [None]
        while pending:
            for artifact in client.list_artifacts(run.info.run_id, pending.pop()):
                if artifact.is_dir and not artifact.path.startswith(folders):
                    pending.append(artifact.path)
                elif not artifact.is_dir and artifact.path not in names and not artifact.path.startswith(folders):
                    undeclared.add(f"artifact {artifact.path}")
    assert not undeclared, sorted(undeclared)

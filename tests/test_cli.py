"""The command line as a user types it: exit codes, clear errors within seconds, the dry run, the version."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import baselines
from bench.cli import main
from tests.conftest import REPO, TINY, child_runs


@pytest.mark.integration  # a suite through the CLI, its cells in worker processes
def test_cli_run_exit_code_and_report(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    monkeypatch.setattr(baselines.MODELS["vae-mlp"], "train_step", lambda *a: {"loss": float("nan")})
    args = ["run", "--suite", "quick", "--no-progress", "--executor", "inline", "--set", "seeds=[0]"]
    result = CliRunner().invoke(main, args + [a for t in TINY for a in ("--set", t)])
    assert result.exit_code == 1, result.output
    assert "done: 1 finished, 0 skipped (already finished), 1 failed" in result.output
    assert "FAILED vae-mlp/digits/seed0" in result.output and "training diverged at step 1" in result.output
    result = CliRunner().invoke(main, ["report", "--suite", "quick"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "quick" / "leaderboard.md").is_file()
    assert "attached to parent run" in result.output


@pytest.mark.parametrize("command", ["run", "report"])
def test_unreachable_tracking_server_fails_in_seconds(tmp_path, monkeypatch, command):
    """The user's default environment (no MLFLOW_HTTP_REQUEST_* variables): MLflow alone retries for minutes."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(var, raising=False)
    args = [command, "--suite", "quick", "--tracking-uri", "http://127.0.0.1:9"]
    if command == "run":
        args += ["--no-progress"] + [a for t in TINY for a in ("--set", t)]
    start = time.perf_counter()
    result = CliRunner().invoke(main, args)
    assert time.perf_counter() - start < 10
    assert result.exit_code == 2, result.output
    assert "error: cannot use tracking store http://127.0.0.1:9" in result.output
    assert "training" not in result.output and "loading dataset" not in result.output


def test_inception_without_weights_offline_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("BENCH_INCEPTION_WEIGHTS", raising=False)
    result = CliRunner().invoke(main, ["run", "--suite", "quick", "--set", "eval.encoder=inception"])
    assert result.exit_code == 2, result.output
    assert "error: the inception encoder needs torch-fidelity's Inception-v3 weights" in result.output
    assert "BENCH_INCEPTION_WEIGHTS=" in result.output and "--set eval.encoder=domain" in result.output
    assert "training" not in result.output and not (tmp_path / "mlflow.db").exists()


def test_too_few_images_for_the_feature_dimension_fail_before_training(tmp_path, monkeypatch, inception_weights):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    monkeypatch.setenv("BENCH_INCEPTION_WEIGHTS", str(inception_weights))
    args = ["run", "--suite", "quick", "--set", "eval.encoder=inception"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "FID needs more images than feature dimensions: 2000 generated" in result.output
    result = CliRunner().invoke(main, [*args, "--set", "eval.num_samples=3000"])
    assert result.exit_code == 2, result.output
    assert "digits/train: FID needs more images than feature dimensions: 3000 generated and 1137 real" in result.output
    assert "training" not in result.output and not (tmp_path / "mlflow.db").exists()


def test_cuda_without_a_gpu_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    result = CliRunner().invoke(main, ["run", "--suite", "quick", "--set", "train.device=cuda"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "error: train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'"
    )


def test_unwritable_results_or_report_directory_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("BENCH_RESULTS", str(blocker / "results"))
    result = CliRunner().invoke(main, ["run", "--suite", "quick"])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: cannot write to the results directory {blocker / 'results'}")
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "results"))
    result = CliRunner().invoke(main, ["report", "--suite", "quick", "--out", str(blocker / "report")])
    assert result.exit_code == 2 and "error: cannot write the report to" in result.output
    monkeypatch.setenv("BENCH_CACHE", str(blocker / "cache"))
    result = CliRunner().invoke(main, ["run", "--suite", "quick"])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: cannot write to genbench's cache {blocker / 'cache'}")
    assert "set BENCH_CACHE" in result.output


def test_caches_live_in_the_users_cache_directory_whatever_folder_runs(tmp_path, monkeypatch):
    """The domain encoders and real features go to $BENCH_CACHE, else platformdirs' user cache (on Linux
    $XDG_CACHE_HOME/genbench), datasets to its data/ unless $BENCH_DATA: the same wherever genbench runs from;
    results stay under ./results."""
    from bench.data import data_root
    from bench.storage import cache_dir

    monkeypatch.delenv("BENCH_CACHE")
    monkeypatch.delenv("BENCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for folder in (tmp_path, REPO):
        monkeypatch.chdir(folder)
        assert cache_dir() == tmp_path / "xdg" / "genbench" / "features"
        assert data_root() == tmp_path / "xdg" / "genbench" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "genbench" / "features"
    monkeypatch.setenv("BENCH_CACHE", "~/elsewhere")
    assert cache_dir() == Path.home() / "elsewhere"


def test_dry_run_says_what_would_happen_to_each_cell(quick_run, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    args = ["run", "--suite", "quick", "--dry-run", *(a for t in TINY for a in ("--set", t))]
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path / "fresh"))
    fresh = CliRunner().invoke(main, args)
    assert fresh.exit_code == 0, fresh.output
    assert fresh.output.count("run: train 20 steps and evaluate") == 4
    assert not (tmp_path / "fresh" / "mlflow.db").exists()  # a dry run writes nothing
    monkeypatch.setenv("BENCH_RESULTS", str(quick_run["results"]))
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0 and done.output.count("skip: FINISHED as run") == 4, done.output
    keys = set(child_runs(quick_run["uri"])["tags.bench.cell"])
    assert all(k in done.output for k in keys)
    # a third seed: its cells are estimated from the finished cells of their variant (seeds 0 and 1)
    more = CliRunner().invoke(main, [*args, "--set", "seeds=[0, 1, 2]"])
    assert more.exit_code == 0 and more.output.count("skip: FINISHED as run") == 4, more.output
    runs = child_runs(quick_run["uri"])
    for model in ("gan-mlp", "vae-mlp"):
        cells = runs[runs["tags.bench.model"] == model]
        spent = (
            cells["metrics.time/train_s"] + cells["metrics.time/eval_s"] + cells["metrics.time/eval_best_s"]
        ).mean()
        line = next(line for line in more.output.splitlines() if f"{model}/digits/seed2" in line)
        assert f"(~{spent:.0f} s, from 2 finished cell(s) of its variant)" in line, line
    assert "estimated time: ~" in more.output and "for 2 of the 2 cells to run" in more.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == "bench, version 0.1.0"


def test_every_command_has_a_short_help_that_fits_the_listing():
    from bench.cli import main as bench_main

    for name, command in bench_main.commands.items():
        assert command.short_help and len(command.short_help) <= 45, name  # click cuts longer ones with "..."


def test_a_crash_exits_3_not_1_like_failed_cells(monkeypatch, capsys):
    """An exception genbench did not expect (a bug) exits 3, distinct from 1 (some cells failed) and 2 (bad input),
    and keeps its traceback for the report."""
    import sys

    from bench import cli

    def broken(config_path):
        raise RuntimeError("something genbench did not foresee")

    monkeypatch.setattr(cli.main.commands["list"], "callback", broken)
    monkeypatch.setattr(sys, "argv", ["bench", "list"])
    with pytest.raises(SystemExit) as exit_:
        cli.entry()
    err = capsys.readouterr().err
    assert exit_.value.code == cli.CRASHED == 3 and "Traceback" in err
    assert "bench crashed: RuntimeError: something genbench did not foresee" in err
    monkeypatch.undo()
    monkeypatch.setattr(sys, "argv", ["bench", "list", "--config", "/nonexistent/bench.toml"])
    with pytest.raises(SystemExit) as exit_:
        cli.entry()
    assert exit_.value.code == 2  # bad input stays 2


@pytest.mark.parametrize(
    "words, expected",
    [
        ("bench run --suite q", "plain,quick"),
        ("bench eval --dataset fa", "plain,fashion-mnist"),
        ("bench perf --models gan-mlp,v", "plain,gan-mlp,vae-mlp"),
    ],
)
def test_shell_completion_of_suites_datasets_and_models(words, expected, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "COMP_WORDS": words, "COMP_CWORD": "3", "_BENCH_COMPLETE": "bash_complete"}
    out = subprocess.run([sys.executable, "-m", "bench"], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.stdout.split() == [expected], out

"""`bench sweep` (bench/run/sweep.py, bench/report/sweep.py): search spaces, the seeded sampler, the budget curve's
statistics against brute force, validation scores on data disjoint from the final evaluation's, and one sweep
SIGKILLed in the middle and completed by the same command."""

from __future__ import annotations

import functools
import itertools
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bench import config, schema, tracking
from bench.cli import main
from bench.config import ConfigError
from bench.report.stats import all_fail, expected_best, expected_best_band
from bench.run.sweep import sample_trials, trial_cells
from tests import components
from tests.conftest import BENCH_TOML, REPO, WORKER_THREADS, seed_cache, wait_until

SWEEP = (  # the tune suite at a CPU-seconds budget; the domain recipe of conftest.TINY (its cache is reused)
    "models=['gan-mlp', 'vae-mlp']",
    "seeds=[0]",
    "sweep.trials=3",
    "train.steps=60",
    "train.batch_size=32",
    "train.log_every=20",
    "train.sample_every=30",
    "train.checkpoint_every=10",
    "train.eval_every=30",
    "train.eval_samples=200",
    "eval.num_samples=200",
    "eval.kid_subset_size=100",
    "eval.kid_subsets=10",
    "eval.iwae_k=16",
    "features.domain.steps=150",
    "features.domain.min_test_accuracy=0.5",
)


def tune(*extra: str) -> config.BenchConfig:
    return config.load(BENCH_TOML, SWEEP + extra, "tune")


# ------------------------------------------------------------------------------------------- search spaces, sampler


def test_the_sampler_is_seeded_inside_the_spaces_and_a_larger_budget_extends_a_smaller_one():
    cfg = tune()
    suite = cfg.suite("tune")
    first, again = sample_trials(cfg, suite, "gan-mlp"), sample_trials(cfg, suite, "gan-mlp")
    assert [t.values for t in first] == [t.values for t in again]
    assert len({tuple(sorted(t.values.items())) for t in first}) == 3  # distinct draws
    for t in first:
        for name, value in t.values.items():
            assert cfg.search["gan-mlp"][name].contains(value)
            assert getattr(t.model_config, name) == value  # the drawn value is what the trial trains with
    other = sample_trials(tune("sweep.seed=1"), tune("sweep.seed=1").suite("tune"), "gan-mlp")
    assert [t.values for t in other] != [t.values for t in first]
    longer = tune("sweep.trials=6")
    assert [t.values for t in sample_trials(longer, longer.suite("tune"), "gan-mlp")][:3] == [t.values for t in first]
    # log-uniform: the learning rates of many draws spread evenly over the decades of [1e-5, 1e-2]
    many = tune("sweep.trials=600")
    lrs = np.log10([t.values["lr"] for t in sample_trials(many, many.suite("tune"), "gan-mlp")])
    counts = np.histogram(lrs, bins=3, range=(-5, -2))[0]
    assert counts.min() > 150, counts
    cells = trial_cells(cfg, suite)
    assert {c.seed for c, _ in cells}.isdisjoint(suite.seeds)  # trials never train with a reported seed
    assert len({c.key("d") for c, _ in cells}) == len(cells)


def test_bench_sweep_dry_run_draws_the_same_configurations_each_time(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_RESULTS", str(tmp_path))
    args = ["sweep", "--config", str(BENCH_TOML), "--suite", "tune", "--dry-run"]
    for s in SWEEP:
        args += ["--set", s]
    first = CliRunner().invoke(main, args)
    second = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.output == second.output
    assert first.output.count("run: train 60 steps") == 6
    assert "gan-mlp/digits/trial2" in first.output and "lr = " in first.output
    reseeded = CliRunner().invoke(main, [*args, "--set", "sweep.seed=1"])
    assert reseeded.exit_code == 0 and reseeded.output != first.output
    assert not (tmp_path / "mlflow.db").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "space, message",
    [
        ("latent_dim={uniform=[10.0, 200.0]}", "use choice"),
        ("depth={choice=[1, 2]}", "not a hyperparameter"),
        ("lr={gaussian=[1e-4, 1e-3]}", "log_uniform"),
        ("lr={log_uniform=[0.0, 1e-2]}", "low > 0"),
    ],
)
def test_a_bad_search_space_is_a_one_line_error(space, message):
    key, _, value = space.partition("=")
    with pytest.raises(ConfigError, match=message):
        config.load(BENCH_TOML, (f"models.gan-mlp.search.{key}={value}",), "tune")


def test_a_space_that_leaves_out_the_papers_value_cannot_be_swept():
    cfg = config.load(BENCH_TOML, ("models.gan-mlp.search.lr={log_uniform=[1e-3, 1e-2]}",), "tune")
    with pytest.raises(ConfigError, match="configured value 0.0002 lies outside lr ~ log-uniform"):
        sample_trials(cfg, cfg.suite("tune"), "gan-mlp")
    config.load(BENCH_TOML, ("models.gan-mlp.lr=0.5",), "tune")  # not a sweep: any value may be --set


def test_a_model_without_a_search_space_cannot_be_swept(tmp_path):
    text = BENCH_TOML.read_text()
    start = text.index("[models.vae-mlp.search]")
    end = text.index("\n[", start + 1)
    path = tmp_path / "bench.toml"
    path.write_text(text[:start] + text[end:])
    cfg = config.load(path, (), "tune")
    with pytest.raises(ConfigError, match=r"no search space: add a \[models.vae-mlp.search\]"):
        sample_trials(cfg, cfg.suite("tune"), "vae-mlp")


# ------------------------------------------------------------------------------------------- the budget curve


def _brute_force(scores, k):
    """Every k-subset of the trials (without replacement: k fresh trials), the failed ones (∞) found nothing."""
    x = [s if math.isfinite(s) else math.inf for s in scores]
    best = [min(draw) for draw in itertools.combinations(x, k)]
    best = [b for b in best if math.isfinite(b)]
    return sum(best) / len(best)


@pytest.mark.parametrize("scores", [[3.0, 1.0, 4.0, 1.5, 9.0], [7.0, math.nan, 2.0, 2.0, math.inf, 5.5]])
def test_expected_best_equals_the_brute_force_mean_over_every_draw(scores):
    curve = expected_best(scores)
    for k in range(1, len(scores) + 1):
        assert curve[k - 1] == pytest.approx(_brute_force(scores, k), rel=1e-12)
    assert curve[0] >= curve[-1]
    assert np.isnan(expected_best([math.nan, math.inf])).all()
    fails = all_fail(scores)  # the share of k-subsets in which every trial failed
    for k in range(1, len(scores) + 1):
        draws = list(itertools.combinations(scores, k))
        nothing = sum(all(not math.isfinite(s) for s in draw) for draw in draws) / len(draws)
        assert fails[k - 1] == pytest.approx(nothing, abs=1e-12)


@pytest.mark.slow  # 150 bootstrap bands against a 200,000-draw truth: a coverage check
def test_the_bootstrap_band_holds_the_true_curve_about_95_percent_of_the_time():
    """Trials drawn from a known distribution (FID-like, log-normal): the true expected best at k is known by a large
    simulation; the 95% band from 12 trials should cover it most of the time (the percentile bootstrap of a
    minimum undercovers somewhat; it must not be far off)."""
    rng = np.random.default_rng(0)
    k = 4
    truth = np.mean(np.min(rng.lognormal(3, 0.6, size=(200_000, k)), axis=1))
    covered = 0
    for rep in range(150):
        scores = rng.lognormal(3, 0.6, size=12)
        low, high = expected_best_band(scores, resamples=300, seed=rep)
        covered += low[k - 1] <= truth <= high[k - 1]
    assert covered / 150 > 0.8


# ------------------------------------------------------------------------------------------- disjoint data


def test_trials_are_scored_on_the_validation_split_disjoint_from_the_final_evaluation(
    domain_cache, tmp_path, monkeypatch
):
    """A trial's score comes from the validation split's features; those images are carved out of the training
    split, so no reference or test image (what the retrained cells' reported numbers are scored on) is among them,
    and the trial does not evaluate on the test split at all. A second trial diverges (its score is NaN): it is a
    failed trial, and the sweep goes on to retrain the first."""
    import bench.run.cell as cell_module
    from bench.data import load
    from bench.eval.encoders import build_encoder
    from bench.run.sweep import run_sweep
    from bench.storage import cache_dir

    cfg = tune("models=['vae-mlp']", "sweep.trials=2", "train.steps=20")
    dataset = load("digits", validation=cfg.suite("tune").eval.validation_images)
    rows = lambda images: {bytes(x.numpy().tobytes()) for x in images}  # noqa: E731
    validation = rows(dataset.validation_images)
    assert len(validation) > 250
    assert validation.isdisjoint(rows(dataset.train_images))  # the reference split: train less the validation carve
    assert len(validation & rows(dataset.test_images)) <= 2  # only digits that occur twice in the raw data

    seen = {}
    real_fid = cell_module.validation_fid

    def spy(model, encoder, real, *args):
        if "real" in seen:
            return math.nan  # the second trial "diverged"
        seen["real"] = real.clone()
        return real_fid(model, encoder, real, *args)

    monkeypatch.setattr(cell_module, "validation_fid", spy)
    results = tmp_path / "results"
    seed_cache(domain_cache, results)
    done = run_sweep(cfg, "tune", results=results, executor="inline", progress=False, echo=lambda s: None)
    assert [o.status for o in done.trials] == ["FINISHED", "FAILED"] and "diverged" in done.trials[1].error
    assert [o.status for o in done.retrained] == ["FINISHED"] and done.winners[("digits", "vae-mlp")]["trial"] == 0
    runs = tracking.load_runs(tracking.default_uri(results), schema.sweep_experiment("tune"))
    (trial,) = runs[(runs[schema.SWEEP_ROLE] == "trial") & (runs["status"] == "FINISHED")].to_dict("records")
    logged = {k[len("metrics.") :] for k, v in trial.items() if k.startswith("metrics.") and pd.notna(v)}
    scored = {k for k in logged if not k.startswith(("time/", "throughput/", "train/", "periodic/", "system/"))}
    assert scored == {schema.SWEEP_SCORE}  # nothing scored on the test or reference split
    encoder = build_encoder("domain", dataset, cfg.domain, cache_dir(), torch.device("cpu"))
    expected = encoder(dataset.validation_images, 500)["features"].double()  # the validation images' own features
    assert seen["real"].shape == expected.shape
    torch.testing.assert_close(seen["real"], expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- killed and completed


def bench_sweep(results: Path) -> subprocess.Popen:
    bench = Path(sys.executable).parent / "bench"
    args = [str(bench), "sweep", "--config", str(BENCH_TOML), "--suite", "tune", "--no-progress"]
    for setting in SWEEP:
        args += ["--set", setting]
    env = {**os.environ, "BENCH_RESULTS": str(results), "BENCH_OFFLINE": "1", **WORKER_THREADS}
    return subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


@pytest.fixture(scope="session")
def killed_sweep(domain_cache, tmp_path_factory):
    """`bench sweep` SIGKILLed (parent and worker) once a trial has finished and another has checkpointed, then the
    same command run to the end. Once per test session (whichever xdist worker asks first)."""
    return components.once_per_session(tmp_path_factory, "killed-sweep", functools.partial(_killed_sweep, domain_cache))


def _killed_sweep(domain_cache, results: Path) -> dict:
    seed_cache(domain_cache, results)
    uri = tracking.default_uri(results)
    experiment = schema.sweep_experiment("tune")
    proc = bench_sweep(results)

    def finished_and_checkpointed():
        if not any((results / "checkpoints").glob("*/last.pt")) or not (results / "mlflow.db").exists():
            return None
        runs = tracking.load_runs(uri, experiment)
        if runs.empty or schema.SWEEP_ROLE not in runs:
            return None
        done = runs[(runs[schema.SWEEP_ROLE] == "trial") & (runs["status"] == "FINISHED")]
        return dict(zip(done[schema.CELL], done["run_id"], strict=True)) or None

    before = wait_until(finished_and_checkpointed, 240, "a finished trial and another's checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    killed = tracking.load_runs(uri, experiment)
    killed_done = killed[(killed["status"] == "FINISHED") & (killed[schema.SWEEP_ROLE] == "trial")]
    again = bench_sweep(results)
    out, _ = again.communicate(timeout=600)
    kept = dict(zip(killed_done[schema.CELL], killed_done["run_id"], strict=True))
    return {
        "results": results, "uri": uri, "before": kept, "first_seen": before, "returncode": again.returncode,
        "out": out, "runs": tracking.load_runs(uri, experiment),
    }  # fmt: skip


def test_a_killed_sweep_completes_with_every_finished_trial_kept(killed_sweep):
    out, runs = killed_sweep["out"], killed_sweep["runs"]
    assert killed_sweep["returncode"] == 0, out
    trials = runs[runs[schema.SWEEP_ROLE] == "trial"]
    finished = trials[trials["status"] == "FINISHED"]
    assert finished[schema.CELL].nunique() == 6 and len(finished) == 6, finished[[schema.CELL, "status"]]
    for key, run_id in killed_sweep["before"].items():  # kept: not trained again
        assert finished.loc[finished[schema.CELL] == key, "run_id"].item() == run_id
    assert out.count("already FINISHED") == len(killed_sweep["before"]) >= 1
    assert "continuing its interrupted run" in out  # the trial killed in the middle resumed in its own run
    assert f"trials: {6 - len(killed_sweep['before'])} run, {len(killed_sweep['before'])} already finished" in out


def test_the_trials_are_tracked_for_the_mlflow_ui_with_the_sampled_configurations(killed_sweep):
    runs = killed_sweep["runs"]
    cfg = tune()
    trials = runs[(runs[schema.SWEEP_ROLE] == "trial") & (runs["status"] == "FINISHED")]
    for model in ("gan-mlp", "vae-mlp"):
        drawn = sample_trials(cfg, cfg.suite("tune"), model)
        mine = trials[trials[schema.MODEL] == model].assign(n=lambda d: d[schema.TRIAL].astype(int)).sort_values("n")
        assert list(mine["n"]) == [0, 1, 2]
        for (_, run), trial in zip(mine.iterrows(), drawn, strict=True):
            for name, value in trial.values.items():
                assert float(run[f"params.{schema.SEARCH_PARAM_PREFIX}{name}"]) == pytest.approx(value, rel=1e-12)
                assert float(run[f"params.model.{name}"]) == pytest.approx(value, rel=1e-12)
            assert run[schema.SWEEP] == "tune" and math.isfinite(run[f"metrics.{schema.SWEEP_SCORE}"])
    retrained = runs[(runs[schema.SWEEP_ROLE] == "retrain") & (runs["status"] == "FINISHED")]
    assert sorted(retrained[schema.MODEL]) == ["gan-mlp", "vae-mlp"]
    for _, run in retrained.iterrows():  # the winner: the lowest validation score of its model's trials
        mine = trials[trials[schema.MODEL] == run[schema.MODEL]]
        best = mine.loc[mine[f"metrics.{schema.SWEEP_SCORE}"].idxmin()]
        assert run[schema.TRIAL] == best[schema.TRIAL]
        searched = [k for k in best.index if k.startswith(f"params.{schema.SEARCH_PARAM_PREFIX}") and pd.notna(best[k])]
        assert searched
        for key in searched:
            name = key[len(f"params.{schema.SEARCH_PARAM_PREFIX}") :]
            assert run[f"params.model.{name}"] == best[f"params.model.{name}"]
        assert pd.notna(run.get(f"metrics.{schema.FID}"))  # the full protocol
        assert pd.isna(run.get(f"metrics.{schema.SWEEP_SCORE}"))


def test_the_sweep_report_has_the_budget_figure_the_table_and_the_retrained_leaderboard(killed_sweep):
    folder = killed_sweep["results"] / "reports" / schema.sweep_experiment("tune")
    md = (folder / "sweep.md").read_text()
    assert (folder / "figures" / "digits-budget.png").stat().st_size > 10_000
    curves = pd.read_csv(folder / "sweep.csv")
    trials = killed_sweep["runs"]
    trials = trials[(trials[schema.SWEEP_ROLE] == "trial") & (trials["status"] == "FINISHED")]
    for model in ("gan-mlp", "vae-mlp"):
        mine = curves[curves["model"] == model]
        assert list(mine["budget"]) == [1, 2, 3]
        scores = trials.loc[trials[schema.MODEL] == model, f"metrics.{schema.SWEEP_SCORE}"]
        assert mine["expected_best"].iloc[-1] == pytest.approx(expected_best(list(scores))[-1])
        assert mine["expected_best"].iloc[0] == pytest.approx(scores.mean())  # one draw: the mean trial
        assert (mine["low"] <= mine["expected_best"] + 1e-9).all() and (
            mine["expected_best"] <= mine["high"] + 1e-9
        ).all()
        assert f"| digits | {model} | 3 | 0 |" in md
    board = (folder / "leaderboard.md").read_text()
    assert "gan-mlp" in board and "vae-mlp" in board and "trial" not in board
    protocol = (folder / "protocol.json").read_text()
    assert '"search_spaces"' in protocol and '"log_uniform"' in protocol and '"encoder"' in protocol


def test_the_report_counts_the_latest_sweeps_trials_once_each_and_failures_as_draws_that_found_nothing():
    from bench.report.sweep import sweeps

    def trial(key, n, status, score, start):
        return {
            schema.CELL: key, schema.TRIAL: str(n), schema.SWEEP_ROLE: "trial", schema.DATASET: "digits",
            schema.MODEL: "gan-mlp", "status": status, "start_time": start, f"metrics.{schema.SWEEP_SCORE}": score,
            "params.search.lr": "0.001", "run_id": f"r{start}",
        }  # fmt: skip

    runs = pd.DataFrame(
        [
            trial("a", 0, "KILLED", math.nan, 1),  # killed, then resumed in a later run: one trial
            trial("a", 0, "FINISHED", 30.0, 5),
            trial("b", 1, "FAILED", math.nan, 2),  # diverged
            trial("c", 2, "FINISHED", 20.0, 3),
            trial("old", 3, "FINISHED", 1.0, 0),  # an earlier sweep's trial (another schedule): not this one's
        ]
    )
    (found,) = sweeps(runs, resamples=50, keys={"a", "b", "c"})
    assert found.budget == 3 and found.failed == 1 and found.winner == 2
    assert found.curve[0] == pytest.approx(25.0)  # one draw: the mean of the trials that found something
    assert found.curve[-1] == pytest.approx(_brute_force([30.0, math.nan, 20.0], 3))
    (everything,) = sweeps(runs, resamples=50)
    assert everything.budget == 4 and everything.winner == 3  # without the keys the old trial would win


def test_bench_report_sweep_writes_the_report_again_from_the_store(killed_sweep, tmp_path):
    out = tmp_path / "again"
    result = CliRunner().invoke(
        main, ["report", "--config", str(BENCH_TOML), "--suite", "tune", "--sweep", "--out", str(out)],
        env={"BENCH_RESULTS": str(killed_sweep["results"])},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    first = killed_sweep["results"] / "reports" / schema.sweep_experiment("tune")
    assert (out / "sweep.csv").read_text() == (first / "sweep.csv").read_text()  # the same seeded bootstrap
    assert (out / "leaderboard.csv").read_text() == (first / "leaderboard.csv").read_text()
    assert "| digits | gan-mlp | 3 | 0 |" in result.output

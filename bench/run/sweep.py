"""`bench sweep`: equal tuning budgets (Lucic et al. 2018, "Are GANs Created Equal?").

For each (dataset, model) of a suite, `sweep.trials` configurations are drawn from the model's search space
([models.NAME.search]) by a sampler seeded with `sweep.seed` and the model's name: trial t is always the t-th draw,
so the same command draws the same configurations, a killed sweep samples the same remaining ones, and a larger
budget extends a smaller one. Every trial is a cell of its own (bench.cell key, resume, failure isolation, packing,
Ray) that trains with seed TRIAL_SEED_BASE + t and is scored on the validation split only (schema.SWEEP_SCORE_RULE:
training images carved out, disjoint from every image a reported number is scored on). The configuration with the
lowest validation score is then retrained over the suite's seeds and evaluated under the suite's full protocol.

Everything lives in the experiment `schema.sweep_experiment(suite)`: a parent run per `bench sweep`, a child run per
trial (tags bench.sweep, bench.sweep_role = trial, bench.trial; the sampled values as params search.<name>) and per
retrained cell (bench.sweep_role = retrain, bench.trial = the winning trial). bench/report/sweep.py turns them into
the budget figure and the tables.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import schema, tracking
from bench.config import TRIAL_SEED_BASE, BenchConfig, ConfigError, SearchDim, SuiteConfig
from bench.run import checkpoints
from bench.run.cell import Outcome, SuiteRun
from bench.run.claim import open_cell, wait_elsewhere
from bench.run.executors import build_executor
from bench.run.interrupts import interrupt_on
from bench.run.matrix import Cell, expand
from bench.run.suite import _open_suite, _preflight, run_real_row, time_per_model


@dataclass(frozen=True)
class Trial:
    """One draw of a model's search space: its number, the model's configuration with the drawn values, the values."""

    number: int
    model_config: object
    values: dict[str, float | int]


def draw(dim: SearchDim, rng: random.Random) -> float | int:
    if dim.kind == "choice":
        return dim.values[rng.randrange(len(dim.values))]
    low, high = dim.values
    if dim.kind == "log_uniform":
        return math.exp(rng.uniform(math.log(low), math.log(high)))
    return rng.uniform(low, high)


def sample_trials(config: BenchConfig, suite: SuiteConfig, model: str) -> list[Trial]:
    """The suite's `sweep.trials` draws of `model`'s search space, in order: a random.Random seeded with the sweep's
    seed and the model's name draws the hyperparameters of each trial in name order (the first k draws of a budget
    B > k are the draws of budget k). A drawn configuration the model rejects is a configuration error."""
    space = config.search.get(model)
    if not space:
        raise ConfigError(
            f"model {model} has no search space: add a [models.{model}.search] table to {config.path.name} "
            "(for example lr = {{ log_uniform = [1e-5, 1e-2] }}), or leave the model out of the sweep's suite"
        )
    base = config.models[model]
    for dim in space.values():
        if not dim.contains(getattr(base, dim.name)):
            raise ConfigError(
                f"[models.{model}.search] {dim.name}: the configured value {getattr(base, dim.name)!r} lies outside "
                f"{dim.describe()}; widen the range so the search can find the paper's configuration"
            )
    rng = random.Random(f"genbench-sweep|{suite.sweep.seed}|{model}")
    trials = []
    for number in range(suite.sweep.trials):
        values = {name: draw(space[name], rng) for name in sorted(space)}
        try:
            trials.append(Trial(number, dataclasses.replace(base, **values), values))
        except (ValueError, TypeError) as e:
            raise ConfigError(
                f"[models.{model}.search]: trial {number} drew {values}, which the model rejects: {e}"
            ) from None
    return trials


def trial_cells(config: BenchConfig, suite: SuiteConfig) -> list[tuple[Cell, Trial]]:
    """Every trial of the sweep as a cell, by dataset, then model, then trial number."""
    out = []
    for model in suite.models:
        trials = sample_trials(config, suite, model)
        for dataset in suite.datasets:
            for trial in trials:
                cell = Cell(
                    suite.name, model, dataset, TRIAL_SEED_BASE + trial.number, trial.model_config, suite.train,
                    suite.eval, config.domain, config.plugins.get(model, ""), trial=trial.number,
                )  # fmt: skip
                out.append((cell, trial))
    order = {d: i for i, d in enumerate(suite.datasets)}
    return sorted(out, key=lambda ct: order[ct[0].dataset])


def check_sweep(suite: SuiteConfig) -> None:
    if not suite.eval.validation_images:
        raise ConfigError(
            f"suite {suite.name}: a sweep scores its trials on the validation split; set eval.validation_images > 0"
        )


@dataclass
class SweepResult:
    trials: list[Outcome]
    retrained: list[Outcome]
    winners: dict[tuple[str, str], dict]  # (dataset, model) → {"trial", "score", "values", "run_id"}
    wall: float


def run_sweep(
    config: BenchConfig,
    suite_name: str,
    *,
    tracking_uri: str | None = None,
    results: Path = Path("results"),
    overrides: tuple[str, ...] = (),
    executor: str = "local",
    ray_address: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    cells_per_gpu: int = 1,
) -> SweepResult:
    """Run the sweep: every trial (finished ones skipped, interrupted ones resumed), then the winner of each
    (dataset, model) over the suite's seeds. SIGTERM stops it as Ctrl-C does."""
    with interrupt_on(signal.SIGTERM):
        suite = config.suite(suite_name)
        check_sweep(suite)
        trials = trial_cells(config, suite)
        cells = [cell for cell, _ in trials]
        results = Path(results)
        uri = tracking.resolve_uri(tracking_uri, results)
        tracking.check_reachable(uri)
        cell_executor = build_executor(executor, cells_per_gpu, ray_address, uri)
        retrain_shape = expand(config, suite)  # what the retrained cells need: the suite's encoders and counts
        ctx = _preflight(config, suite, cells + retrain_shape, results, uri, progress, echo, cells_per_gpu)
        experiment = schema.sweep_experiment(suite.name)
        suite_run = _open_suite(
            suite, cells, ctx, overrides, executor, cells_per_gpu, experiment=experiment,
            tags={schema.SWEEP: suite.name},
        )  # fmt: skip
        suite_run.parent.log_params({"sweep.trials": suite.sweep.trials, "sweep.seed": suite.sweep.seed})
        digests = {name: d.digest for name, d in ctx.datasets.items()}
        record = sweep_record(config, suite, trials, digests)
        suite_run.parent.log_dict(record, schema.SWEEP_ARTIFACT)
        values = {cell.name: trial.values for cell, trial in trials}
        start = time.perf_counter()
        try:
            for dataset in ctx.datasets.values():
                run_real_row(dataset, suite, ctx, suite_run)
            echo(
                f"trials: {len(suite.models)} model(s) × {suite.sweep.trials} configurations × "
                f"{len(suite.datasets)} dataset(s)"
            )
            trial_outcomes = _run_cells(
                cells, suite_run, ctx, cell_executor, echo,
                lambda cell: ({schema.SWEEP_ROLE: "trial", schema.TRIAL: str(cell.trial)}, values[cell.name]),
            )  # fmt: skip
            winners = pick_winners(suite_run.tracker, trials, ctx, echo)
            retrain = []
            for (dataset, model), won in winners.items():
                winner = next(
                    t for c, t in trials if c.dataset == dataset and c.model == model and c.trial == won["trial"]
                )
                retrain += [
                    Cell(suite.name, model, dataset, seed, winner.model_config, suite.train, suite.eval, config.domain,
                         config.plugins.get(model, ""))
                    for seed in suite.seeds
                ]  # fmt: skip
            trial_of = {(d, m): str(w["trial"]) for (d, m), w in winners.items()}
            echo(f"retraining the winners: {len(retrain)} cells")
            retrained = _run_cells(
                retrain, suite_run, ctx, cell_executor, echo,
                lambda cell: (
                    {schema.SWEEP_ROLE: "retrain", schema.TRIAL: trial_of[(cell.dataset, cell.model)]},
                    winners[(cell.dataset, cell.model)]["values"],
                ),
            )  # fmt: skip
        except KeyboardInterrupt:
            suite_run.parent.end("KILLED")
            raise
        wall = time.perf_counter() - start
        for label, outcomes in (("trial", trial_outcomes), ("retrained cell", retrained)):
            for line in time_per_model(outcomes):  # what a larger budget, or a sweep of more models, will cost
                echo(line.replace("time per cell", f"time per {label}", 1))
        record["winners"] = [
            {"dataset": d, "model": m, **w,
             "retrained": [c.key(digests[d]) for c in retrain if (c.dataset, c.model) == (d, m)]}
            for (d, m), w in winners.items()
        ]  # fmt: skip
        suite_run.parent.log_dict(record, schema.SWEEP_ARTIFACT)
        suite_run.parent.log_metrics(
            {
                "sweep/trials_finished": sum(o.status in ("FINISHED", "SKIPPED") for o in trial_outcomes),
                "sweep/trials_failed": sum(o.status == "FAILED" for o in trial_outcomes),
                schema.CELLS_FAILED: sum(o.status == "FAILED" for o in retrained),
                schema.SUITE_WALL_S: wall,
            }
        )
        suite_run.parent.end("FAILED" if any(o.status == "FAILED" for o in retrained) else "FINISHED")
        return SweepResult(trial_outcomes, retrained, winners, wall)


def _run_cells(cells, suite_run: SuiteRun, ctx, cell_executor, echo, tags_of) -> list[Outcome]:
    """The cells through the executor, each opened (or skipped, or resumed) as `bench run` opens its cells and
    tagged as the sweep's (`tags_of(cell)` → its tags and the values that become search.<name> params)."""

    def run_numbered(numbered: tuple[int, Cell]) -> Outcome:
        index, cell = numbered
        opened = open_cell(cell, suite_run, ctx, f"[{index}/{len(cells)}]")
        if isinstance(opened, Outcome):
            return opened
        tags, values = tags_of(cell)
        opened.run.set_tags({schema.SWEEP: cell.suite, **tags})
        opened.run.log_params({f"{schema.SEARCH_PARAM_PREFIX}{k}": v for k, v in values.items()})
        with opened.run.heartbeat(opened.holder):  # held from the claim: queued, starting, or running
            return cell_executor.run(opened, ctx)

    outcomes = cell_executor.map(run_numbered, enumerate(cells, 1))
    return wait_elsewhere(outcomes, suite_run, lambda item: cell_executor.map(run_numbered, [item])[0], echo)


def pick_winners(tracker: tracking.Tracker, trials, ctx, echo) -> dict[tuple[str, str], dict]:
    """The trial with the lowest validation score per (dataset, model), read from the tracking store (trials
    finished by an earlier `bench sweep` count as much as this one's). A (dataset, model) none of whose trials
    finished has no winner and is not retrained."""
    runs = tracking.load_runs(tracker.uri, tracker.experiment)
    scores: dict[str, tuple[float, str]] = {}
    if not runs.empty and f"metrics.{schema.SWEEP_SCORE}" in runs:
        done = runs[(runs["status"] == "FINISHED") & runs[f"metrics.{schema.SWEEP_SCORE}"].notna()]
        for _, row in done.sort_values("start_time").iterrows():
            scores[row[schema.CELL]] = (float(row[f"metrics.{schema.SWEEP_SCORE}"]), row["run_id"])
    winners: dict[tuple[str, str], dict] = {}
    for cell, trial in trials:
        key = cell.key(ctx.datasets[cell.dataset].digest)
        if key not in scores:
            continue
        score, run_id = scores[key]
        best = winners.get((cell.dataset, cell.model))
        if best is None or score < best["score"]:
            winners[(cell.dataset, cell.model)] = {
                "trial": trial.number, "score": score, "values": trial.values, "run_id": run_id,
            }  # fmt: skip
    for dataset, model in dict.fromkeys((c.dataset, c.model) for c, _ in trials):
        won = winners.get((dataset, model))
        if won is None:
            echo(f"{model}/{dataset}: no trial finished; nothing to retrain")
        else:
            shown = ", ".join(
                f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in won["values"].items()
            )
            echo(f"{model}/{dataset}: trial {won['trial']} wins with validation FID {won['score']:.4g} ({shown})")
    return winners


def sweep_record(config: BenchConfig, suite: SuiteConfig, trials, digests: dict[str, str]) -> dict:
    """What defines the sweep (sweep.json on its parent run, and the report's protocol.json): the search spaces, the
    sampler, the trials' configurations, seeds and cell keys (the report shows these trials and no others of the
    experiment), how trials are scored. The winners and their retrained cells' keys are added when the sweep ends."""
    return {
        "suite": suite.name,
        "trials_per_model": suite.sweep.trials,
        "sampler": "random search: random.Random seeded with 'genbench-sweep|<seed>|<model>', hyperparameters drawn "
        "in name order",
        "seed": suite.sweep.seed,
        "trial_seed": f"{TRIAL_SEED_BASE} + trial number",
        "score": schema.SWEEP_SCORE_RULE,
        "retrained_seeds": list(suite.seeds),
        "search_spaces": {
            m: {name: dim.as_dict() for name, dim in sorted(config.search.get(m, {}).items())} for m in suite.models
        },
        "paper_values": {
            m: {name: getattr(config.models[m], name) for name in sorted(config.search.get(m, {}))}
            for m in suite.models
        },
        "trials": [
            {
                "model": c.model,
                "dataset": c.dataset,
                "trial": t.number,
                "seed": c.seed,
                "values": t.values,
                "key": c.key(digests[c.dataset]),
            }
            for c, t in trials
        ],
    }


@dataclass
class PlannedTrial:
    cell: Cell
    trial: Trial
    key: str
    action: str


def plan_sweep(
    config: BenchConfig, suite_name: str, *, tracking_uri: str | None = None, results: Path = Path("results")
) -> list[PlannedTrial]:
    """What `bench sweep` would do to each trial (its drawn configuration, finished, resumed or run), without
    training or writing anything."""
    from bench.data import load as load_dataset

    suite = config.suite(suite_name)
    check_sweep(suite)
    trials = trial_cells(config, suite)
    uri = tracking.resolve_uri(tracking_uri, Path(results))
    tracking.check_reachable(uri)
    digests = {name: load_dataset(name, validation=suite.eval.validation_images).digest for name in suite.datasets}
    finished = {}
    if tracking.store_exists(uri):
        runs = tracking.load_runs(uri, schema.sweep_experiment(suite.name))
        if not runs.empty:
            done = runs[runs["status"] == "FINISHED"]
            finished = dict(zip(done[schema.CELL], done["run_id"], strict=True))
    plan = []
    for cell, trial in trials:
        key = cell.key(digests[cell.dataset])
        attempt = checkpoints.interrupted_attempt(Path(results), key)
        if key in finished:
            action = f"skip: FINISHED as run {finished[key]}"
        elif attempt is not None:
            action = f"resume from step {attempt['step']} of {cell.train.steps}"
        else:
            action = f"run: train {cell.train.steps} steps, score on the validation split"
        plan.append(PlannedTrial(cell, trial, key, action))
    return plan

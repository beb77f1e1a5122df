"""Runs a suite: expand the matrix into cells, check everything they need before training starts, skip cells
already FINISHED with the same `bench.cell` hash, and run each remaining cell data → train → evaluate → tracking
through the chosen executor. A failing cell is recorded FAILED with its error and the suite goes on."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import schema, tracking
from bench.config import BenchConfig, ConfigError, SuiteConfig
from bench.data import Dataset
from bench.data import load as load_dataset
from bench.devices import bf16_note, resolve_device
from bench.eval.decoder_ais import check_test_split
from bench.eval.encoders import weights_path
from bench.eval.metrics import MetricError, check_counts
from bench.eval.pipeline import evaluate_real
from bench.eval.protocol import fingerprint, protocol
from bench.run import checkpoints
from bench.run.cell import CellContext, Outcome, SuiteRun, prepare_real
from bench.run.claim import CellRunner, wait_elsewhere
from bench.run.executors import build_executor
from bench.run.interrupts import interrupt_on
from bench.run.matrix import Cell, encoders_by_dataset, expand
from bench.run.record import flatten, open_run, record
from bench.storage import bytes_digest, cache_dir, unwritable


def run_suite(
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
) -> list[Outcome]:
    """Run every cell of the suite; returns one Outcome per cell (FINISHED, SKIPPED or FAILED). SIGTERM stops it
    as Ctrl-C does (a checkpoint, runs marked KILLED, KeyboardInterrupt). `cells_per_gpu` cells run at once on the
    device (local: that many worker processes; ray: fractional GPUs)."""
    with interrupt_on(signal.SIGTERM):
        suite = config.suite(suite_name)
        cells = expand(config, suite)
        results = Path(results)
        for folder, what, env in ((results, "the results directory", "BENCH_RESULTS"),
                                  (cache_dir(), "genbench's cache", "BENCH_CACHE")):  # fmt: skip
            if why := unwritable(folder):  # before anything starts: the store, checkpoints, caches
                raise ConfigError(f"cannot write to {what} {folder} ({why}); run from a directory where you can "
                                  f"write, or set {env} to one")  # fmt: skip
        uri = tracking.resolve_uri(tracking_uri, results)
        tracking.check_reachable(uri)  # seconds, before data, encoders or training
        cell_executor = build_executor(executor, cells_per_gpu, ray_address, uri)
        ctx = _preflight(config, suite, cells, results, uri, progress, echo, cells_per_gpu)
        suite_run = _open_suite(suite, cells, ctx, overrides, executor, cells_per_gpu)
        try:
            for dataset in ctx.datasets.values():
                run_real_row(dataset, suite, ctx, suite_run)

            run_numbered = CellRunner(len(cells), suite_run, ctx, cell_executor)
            start = time.perf_counter()
            outcomes = cell_executor.map(run_numbered, enumerate(cells, 1))
            if not run_numbered.outage:
                outcomes = wait_elsewhere(
                    outcomes, suite_run, lambda item: cell_executor.map(run_numbered, [item])[0], echo
                )
            run_numbered.stop_if_unreachable(outcomes)
            wall = time.perf_counter() - start
        except KeyboardInterrupt:
            suite_run.parent.end("KILLED")
            raise
        _close_suite(suite_run, outcomes, wall, cells_per_gpu, echo)
        return outcomes


def _preflight(
    config: BenchConfig,
    suite: SuiteConfig,
    cells: list[Cell],
    results: Path,
    uri: str,
    progress: bool,
    echo: Callable[[str], None],
    cells_per_gpu: int,
) -> CellContext:
    """Everything the cells need, checked and prepared before any training starts: the encoders' weights (seconds:
    a missing file stops the suite before data or a domain classifier), the data, each dataset's real features in
    every encoder its cells need (`Cell.encoders`), and the sample counts FID needs."""
    device = resolve_device(suite.train.device, "train.device")
    needed = encoders_by_dataset(cells)
    for name in dict.fromkeys(n for names in needed.values() for n in names):
        weights_path(name)
    datasets = {}
    for name in suite.datasets:
        echo(f"loading dataset {name} ...")
        datasets[name] = load_dataset(name, validation=suite.eval.validation_images)
        _check_ais(suite.eval, datasets[name])
    real = {}
    scoring = suite.eval.encoders
    for name, dataset in datasets.items():

        def check(encoder, dataset=dataset) -> None:
            if encoder.name in scoring:
                _check_sample_counts(suite.eval, dataset, encoder)

        real.update(
            prepare_real(
                dataset,
                needed[name],
                suite.eval,
                config.domain,
                cache_dir(),
                device,
                scoring=scoring,
                echo=echo,
                check=check,
            )  # fmt: skip
        )
        if suite.eval.encoder == "inception" and device.type == "cpu":
            echo(
                f"  note: Inception runs at ~8 images/s on a 2-core CPU (the 299x299 resize): "
                f"{suite.eval.num_samples} samples per cell take ~{suite.eval.num_samples / 8 / 60:.0f} min to score"
            )
    return CellContext(datasets, real, results, device, uri, progress, echo, cells_per_gpu)


def _open_suite(
    suite: SuiteConfig,
    cells: list[Cell],
    ctx: CellContext,
    overrides: tuple[str, ...],
    executor: str,
    cells_per_gpu: int,
    experiment: str | None = None,
    tags: dict[str, str] | None = None,
) -> SuiteRun:
    """The suite's experiment (or `experiment`: a sweep's) and its parent run for this `bench run` (or `bench sweep`,
    with its `tags`); runs orphaned by a dead process closed."""
    tracker = tracking.Tracker(ctx.uri, experiment or suite.name, ctx.results / "artifacts")
    for name, run_id in tracker.close_orphans():
        ctx.echo(f"run {name} ({run_id}) was left RUNNING by a process that no longer exists: marked KILLED")
    finished = tracker.finished_cells()
    what = f"sweep of suite {suite.name}" if experiment else f"suite {suite.name}"
    ctx.echo(f"{what}: {len(cells)} cells on {ctx.device}; tracking at {ctx.uri}")
    if suite.train.precision == "bf16" and (note := bf16_note(ctx.device)):
        ctx.echo(note)
    parent = tracker.start_run(
        f"{'sweep-' if experiment else ''}{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        {
            schema.SUITE: suite.name,
            schema.PARENT: "true",
            "mlflow.note.content": _description(suite, overrides),  # the run's description in the MLflow UI
            **tracking.owner_tags(os.getpid()),
            **(tags or {}),
        },
    )
    parent.log_params(
        {
            "suite": suite.name,
            "overrides": " ".join(overrides) or "-",
            "executor": executor,
            "cells": len(cells),
            "cells_per_gpu": cells_per_gpu,
        }
    )
    return SuiteRun(tracker, parent, finished)


def _close_suite(
    suite_run: SuiteRun, outcomes: list[Outcome], wall: float, cells_per_gpu: int, echo: Callable[[str], None]
) -> None:
    """The suite's counts and aggregate throughput on its parent run, which ends FAILED when a cell failed."""
    failed = sum(o.status == "FAILED" for o in outcomes)
    throughput = aggregate_throughput(outcomes, wall)
    suite_run.parent.log_metrics(
        {
            schema.CELLS_FINISHED: sum(o.status == "FINISHED" for o in outcomes),
            schema.CELLS_SKIPPED: sum(o.status == "SKIPPED" for o in outcomes),
            schema.CELLS_FAILED: failed,
            **throughput,
        }
    )
    for line in time_per_model(outcomes):
        echo(line)
    if throughput.get(schema.SUITE_CELLS_PER_HOUR):
        echo(
            f"{int(throughput[schema.SUITE_CELLS_RUN])} cells in {wall:.0f} s with {cells_per_gpu} at a time: "
            f"{throughput[schema.SUITE_CELLS_PER_HOUR]:.1f} cells/hour, aggregate training throughput "
            f"{throughput[schema.SUITE_TRAIN_IMAGES_PER_S]:,.0f} images/s"
        )
    suite_run.parent.end("FAILED" if failed else "FINISHED")


def _description(suite, overrides: tuple[str, ...]) -> str:
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    lines = [f"**{suite.name}**: {suite.description or '-'}", "", f"command: `{command}`"]
    lines.append(f"overrides: {' '.join(f'`--set {o}`' for o in overrides) if overrides else 'none'}")
    return "\n".join(lines)


def time_per_model(outcomes: list[Outcome]) -> list[str]:
    """What the cells that finished now cost, per model: training against evaluation (final and best, AIS within),
    the mean over the model's cells; what a bigger suite of the same models will cost."""
    by_model: dict[str, list[dict]] = {}
    for o in outcomes:
        if o.status == "FINISHED":
            by_model.setdefault(o.cell.model, []).append(o.metrics)
    if not by_model:
        return []
    lines = ["time per cell (mean over the cells that ran now):"]
    for model, cells in by_model.items():
        spent = {
            part: sum(m.get(k, 0.0) for m in cells for k in keys) / len(cells) for part, keys in schema.COST.items()
        }
        lines.append(f"  {model:<12} {len(cells)} cell(s): {schema.cost_text(spent)}")
    return lines


def aggregate_throughput(outcomes: list[Outcome], wall: float) -> dict[str, float]:
    """What packing buys: cells (finished or failed, not skipped) per hour of the suite's wall time, and the training
    images of the finished cells per second of it."""
    ran = [o for o in outcomes if o.status in ("FINISHED", "FAILED")]
    if not ran or wall <= 0:
        return {}
    images = sum(
        o.metrics.get(schema.TRAIN_IMAGES_PER_S, 0.0) * o.metrics.get(schema.TRAIN_S, 0.0)
        for o in ran
        if o.status == "FINISHED"
    )
    return {
        schema.SUITE_WALL_S: wall,
        schema.SUITE_CELLS_RUN: float(len(ran)),
        schema.SUITE_CELLS_PER_HOUR: len(ran) * 3600.0 / wall,
        schema.SUITE_TRAIN_IMAGES_PER_S: images / wall,
    }


@dataclass
class Planned:
    """What `bench run` would do to one cell."""

    cell: Cell
    key: str  # its bench.cell hash
    action: str  # "run: ..." | "skip: FINISHED as run ID" | "resume from step N of M"
    seconds: float | None = None  # estimated from FINISHED cells of the same variant (other seeds); None: no basis
    basis: int = 0  # how many finished cells the estimate is the mean of


def plan_suite(
    config: BenchConfig, suite_name: str, *, tracking_uri: str | None = None, results: Path = Path("results")
) -> list[Planned]:
    """What `bench run` would do to each cell, without training or writing anything, and how long each cell that
    would run takes, estimated from the finished cells of its variant (the same configuration, other seeds). Reads
    the data (for its digests), the tracking store (an embedded store that does not exist yet is empty) and the
    checkpoints."""
    suite = config.suite(suite_name)
    cells = expand(config, suite)
    uri = tracking.resolve_uri(tracking_uri, Path(results))
    tracking.check_reachable(uri)
    digests = {name: load_dataset(name, validation=suite.eval.validation_images).digest for name in suite.datasets}
    finished: dict[str, str] = {}
    elsewhere: dict[str, str] = {}  # bench.cell key → who holds its lease
    cost: dict[str, list[tuple[float, float]]] = {}  # variant → (training s, evaluation s) of its finished cells
    if tracking.store_exists(uri):  # a dry run never creates the embedded store
        runs = tracking.load_runs(uri, suite.name)
        if not runs.empty:
            elsewhere = _held(runs)
            done = runs[runs["status"] == "FINISHED"]
            finished = dict(zip(done[schema.CELL], done["run_id"], strict=True))
            for _, run in done.iterrows():
                if pd.isna(run.get(f"metrics.{schema.TRAIN_S}")) or pd.isna(run.get(f"metrics.{schema.EVAL_S}")):
                    continue  # not a cell (the real-data row, external samples)
                spent = [
                    sum(_number(run.get(f"metrics.{k}")) for k in schema.COST[p]) for p in ("training", "evaluation")
                ]
                cost.setdefault(run[schema.VARIANT], []).append(tuple(spent))
    plan = []
    for cell in cells:
        key = cell.key(digests[cell.dataset])
        attempt = checkpoints.interrupted_attempt(Path(results), key)
        basis = cost.get(cell.key(digests[cell.dataset], with_seed=False), [])
        left = 1.0  # the share of training still to do
        if key in finished:
            plan.append(Planned(cell, key, f"skip: FINISHED as run {finished[key]}"))
            continue
        if key in elsewhere:
            plan.append(Planned(cell, key, f"running elsewhere ({elsewhere[key]}): wait for it"))
            continue
        if attempt is not None:
            action = f"resume from step {attempt['step']} of {cell.train.steps}"
            left = 1.0 - attempt["step"] / cell.train.steps
        else:
            action = f"run: train {cell.train.steps} steps and evaluate"
        seconds = sum(left * t + e for t, e in basis) / len(basis) if basis else None
        plan.append(Planned(cell, key, action, seconds, len(basis)))
    return plan


def _held(runs: pd.DataFrame) -> dict[str, str]:
    """bench.cell key → its holder in words, for every RUNNING cell run whose lease is live (a heartbeat younger than
    schema.LEASE_S): what another `bench run` is training now."""
    now = time.time()
    out = {}
    running = runs[runs["status"] == "RUNNING"]
    for _, run in running.iterrows():
        beat = run.get(schema.HEARTBEAT)
        started = float(run["start_time"]) / 1000  # ms
        if _lease_live(beat if isinstance(beat, str) else None, started, now) and isinstance(run.get(schema.CELL), str):
            since = time.strftime("%H:%M:%S", time.localtime(started))
            out[run[schema.CELL]] = f"host {run.get(schema.HOST, '?')}, pid {run.get(schema.PID, '?')}, since {since}"
    return out


def _number(value) -> float:
    """A logged metric as a number: 0 where a run lacks it."""
    return 0.0 if value is None or pd.isna(value) else float(value)


def _check_sample_counts(cfg, dataset: Dataset, encoder) -> None:
    """Say before training, rather than after every cell, when FID would be undefined (metrics.check_counts)."""
    try:
        check_counts(cfg.num_samples, len(dataset.split(cfg.reference_split)[0]), encoder.feature_dim, encoder.name)
    except MetricError as e:
        raise ConfigError(f"{dataset.name}/{cfg.reference_split}: {e}") from None


def _check_ais(cfg, dataset: Dataset) -> None:
    try:
        check_test_split(cfg.ais, len(dataset.test_images), dataset.name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def run_real_row(dataset: Dataset, suite: SuiteConfig, ctx: CellContext, suite_run: SuiteRun) -> None:
    """Log the real-data row of (dataset, protocol) once: held-out real images scored as samples (FID floor, real
    IS, KID, precision/recall). Skipped when a FINISHED row with the same key exists; a failure is recorded and the
    suite goes on."""
    real = ctx.scoring(dataset.name, suite.eval)
    key = bytes_digest([f"real|{dataset.digest}|{fingerprint(protocol(suite.eval, dataset, real, ctx.device))}"])[:16]
    if key in suite_run.finished:  # decided before any metric is computed
        return
    try:
        ev = evaluate_real(dataset, suite.eval, real, ctx.device)
    except MetricError as e:  # e.g. a held-out split smaller than the feature dimension: no row, the cells still run
        ctx.echo(f"real data {dataset.name}: no real-data row — {e}")
        return
    name = f"{schema.REAL_MODEL}/{dataset.name}"
    run = open_run(
        suite_run.tracker, name, suite=suite.name, model=schema.REAL_MODEL, family="real", dataset=dataset, seed="-",
        key=key, variant=key, parent=suite_run.parent,
    )  # fmt: skip
    run.log_params(flatten({"eval": dataclasses.asdict(suite.eval)}))
    reference = real[0].reference
    record(run, ev, metrics={schema.EVAL_S: ev.seconds, schema.EVAL_REFERENCE_S: reference.seconds,
                             schema.REFERENCE_CACHED: float(reference.cached)})  # fmt: skip
    run.end("FINISHED")
    n = int(ev.metrics[schema.GENERATED_IMAGES])
    what = "FID floor" if n == suite.eval.num_samples else f"FID at N = {n} (fewer than the models' N: not a floor)"
    ctx.echo(
        f"real data {dataset.name}: {what} {ev.metrics[schema.FID]:.4g} ({n} held-out images vs the "
        f"{suite.eval.reference_split} split), IS {ev.metrics[schema.IS_MEAN]:.4g}"
    )


def _lease_live(heartbeat: str | None, started_s: float, now: float) -> bool:
    """Whether a RUNNING cell run's lease looks held by this machine's clock: its last beat (unix seconds, as the tag
    holds it), or its start before the first beat, younger than LEASE_S. For `bench run --dry-run`'s plan only: a
    takeover is judged without comparing clocks (bench.tracking.lease.Watch)."""
    last = float(heartbeat) if heartbeat else started_s
    return now - last < schema.LEASE_S

"""Runs a suite: expand the matrix into cells, check everything they need before training starts, skip cells
already FINISHED with the same `bench.cell` hash, and run each remaining cell data → train → evaluate → tracking.
A failing cell is recorded FAILED with its error and the suite goes on."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import schema, tracking
from bench.config import BenchConfig, Cell, ConfigError, expand
from bench.data import Dataset
from bench.data import load as load_dataset
from bench.devices import bf16_note, resolve_device
from bench.eval.ais import check_test_split
from bench.eval.encoders import Extractor, build_extractor, find_weights, reference_features
from bench.eval.metrics import MetricError
from bench.eval.pipeline import evaluate_real, extra_parts, fingerprint, prepare_copying, protocol
from bench.run.cell import Outcome, SuiteContext, flatten, grid, interrupted_attempt, open_cell
from bench.run.executors import build_executor
from bench.run.interrupts import interrupt_on
from bench.storage import bytes_digest


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
        return _run_suite(
            config, suite_name, tracking_uri, results, overrides, executor, ray_address, progress, echo, cells_per_gpu
        )


def _run_suite(
    config: BenchConfig,
    suite_name: str,
    tracking_uri: str | None,
    results: Path,
    overrides: tuple[str, ...],
    executor: str,
    ray_address: str | None,
    progress: bool,
    echo: Callable[[str], None],
    cells_per_gpu: int = 1,
) -> list[Outcome]:
    suite = config.suite(suite_name)
    cells = expand(config, suite)
    results = Path(results)
    _check_writable(results)
    device = resolve_device(suite.train.device)
    uri = tracking.resolve_uri(tracking_uri, results)
    tracking.check_reachable(uri)  # seconds, before data, extractors or training
    runner = build_executor(executor, cells_per_gpu, ray_address, uri)
    for name in (suite.eval.extractor, *suite.eval.extra_extractors):
        find_weights(name)  # seconds: a missing weights file stops the suite before data or a domain classifier

    # Preflight: data, feature extractors and the tracking store, before any training starts.
    datasets = {}
    for name in suite.datasets:
        echo(f"loading dataset {name} ...")
        datasets[name] = load_dataset(name)
        _check_ais(suite.eval, datasets[name])
    extractors = {}
    for name in suite.datasets:
        echo(f"feature extractor {suite.eval.extractor} for {name} ...")
        ex = build_extractor(suite.eval.extractor, datasets[name], config.domain, results / "cache", device)
        extractors[(name, suite.eval.extractor)] = ex
        if "test_accuracy" in ex.info:
            echo(f"  test accuracy {ex.info['test_accuracy']:.4f}")
        _check_sample_counts(suite.eval, datasets[name], ex)
        if suite.train.eval_every and suite.eval.extractor != "domain":  # the periodic FID uses domain features
            echo(f"feature extractor domain for {name} (periodic evaluation during training) ...")
            extractors[(name, "domain")] = build_extractor(
                "domain", datasets[name], config.domain, results / "cache", device
            )
        for extra in suite.eval.extra_extractors:  # every encoder is built (weights found) before any training
            echo(f"feature extractor {extra} for {name} ...")
            extractors[(name, extra)] = build_extractor(extra, datasets[name], config.domain, results / "cache", device)
            _check_sample_counts(suite.eval, datasets[name], extractors[(name, extra)])
        if ex.name == "inception" and device.type == "cpu":
            echo(
                f"  note: Inception runs at ~8 images/s on a 2-core CPU (the 299x299 resize): "
                f"{suite.eval.num_samples} samples per cell take ~{suite.eval.num_samples / 8 / 60:.0f} min to score"
            )
    tracker = tracking.Tracker(uri, suite.name, results / "artifacts")
    for name, run_id in tracker.close_orphans():
        echo(f"run {name} ({run_id}) was left RUNNING by a process that no longer exists: marked KILLED")
    finished = tracker.finished_cells()
    echo(f"suite {suite.name}: {len(cells)} cells on {device}; tracking at {uri}")
    if any(c.train.precision == "bf16" for c in cells) and (note := bf16_note(device)):
        echo(note)

    parent = tracker.start_run(
        f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        {
            schema.SUITE: suite.name,
            schema.PARENT: "true",
            "mlflow.note.content": _description(suite, overrides),  # the run's description in the MLflow UI
            **tracking.owner_tags(os.getpid()),
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
    ctx = SuiteContext(
        tracker, parent, datasets, extractors, finished, results, device, progress, echo, uri, cells_per_gpu
    )
    outcomes: list[Outcome] = []
    try:
        for name in suite.datasets:
            run_real_reference(datasets[name], suite, ctx)
            for extractor in (suite.eval.extractor, *suite.eval.extra_extractors):
                seconds = prepare_copying(extractors[(name, extractor)], datasets[name], suite.eval, results / "cache")
                echo(f"copying-test cells of {name} in {extractor} features: ready in {seconds:.1f}s")

        def run_numbered(numbered: tuple[int, Cell]) -> Outcome:
            index, cell = numbered
            opened = open_cell(cell, ctx, f"[{index}/{len(cells)}]")
            return opened if isinstance(opened, Outcome) else runner.run(opened, ctx)

        start = time.perf_counter()
        outcomes = runner.map(run_numbered, enumerate(cells, 1))
        wall = time.perf_counter() - start
    except KeyboardInterrupt:
        parent.end("KILLED")
        raise
    failed = sum(o.status == "FAILED" for o in outcomes)
    throughput = aggregate_throughput(outcomes, wall)
    parent.log_metrics(
        {
            "cells/finished": sum(o.status == "FINISHED" for o in outcomes),
            "cells/skipped": sum(o.status == "SKIPPED" for o in outcomes),
            "cells/failed": failed,
            **throughput,
        }
    )
    if throughput.get("suite/cells_per_hour"):
        echo(
            f"{int(throughput['suite/cells_run'])} cells in {wall:.0f} s with {cells_per_gpu} at a time: "
            f"{throughput['suite/cells_per_hour']:.1f} cells/hour, aggregate training throughput "
            f"{throughput['suite/train_images_per_s']:,.0f} images/s"
        )
    parent.end("FAILED" if failed else "FINISHED")
    return outcomes


def _description(suite, overrides: tuple[str, ...]) -> str:
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    lines = [f"**{suite.name}**: {suite.description or '-'}", "", f"command: `{command}`"]
    lines.append(f"overrides: {' '.join(f'`--set {o}`' for o in overrides) if overrides else 'none'}")
    return "\n".join(lines)


def aggregate_throughput(outcomes: list[Outcome], wall: float) -> dict[str, float]:
    """What packing buys: cells (finished or failed, not skipped) per hour of the suite's wall time, and the training
    images of the finished cells per second of it."""
    ran = [o for o in outcomes if o.status in ("FINISHED", "FAILED")]
    if not ran or wall <= 0:
        return {}
    images = sum(
        o.metrics.get("throughput/train_images_per_s", 0.0) * o.metrics.get("time/train_s", 0.0)
        for o in ran
        if o.status == "FINISHED"
    )
    return {
        "suite/wall_s": wall,
        "suite/cells_run": float(len(ran)),
        "suite/cells_per_hour": len(ran) * 3600.0 / wall,
        "suite/train_images_per_s": images / wall,
    }


def plan_suite(
    config: BenchConfig, suite_name: str, *, tracking_uri: str | None = None, results: Path = Path("results")
) -> list[tuple[Cell, str, str]]:
    """What `bench run` would do to each cell, without training or writing anything: (cell, its bench.cell hash,
    "run" | "skip: FINISHED as run ID" | "resume from step N"). Reads the data (for its digests), the tracking
    store (an embedded store that does not exist yet is empty) and the checkpoints."""
    suite = config.suite(suite_name)
    cells = expand(config, suite)
    uri = tracking.resolve_uri(tracking_uri, Path(results))
    tracking.check_reachable(uri)
    digests = {name: load_dataset(name).digest for name in suite.datasets}
    finished: dict[str, str] = {}
    if tracking.store_exists(uri):  # a dry run never creates the embedded store
        runs = tracking.load_runs(uri, suite.name)
        if not runs.empty:
            done = runs[runs["status"] == "FINISHED"]
            finished = dict(zip(done["bench.cell"], done["run_id"], strict=True))
    plan = []
    for cell in cells:
        key = cell.key(digests[cell.dataset])
        attempt = interrupted_attempt(Path(results), key)
        if key in finished:
            action = f"skip: FINISHED as run {finished[key]}"
        elif attempt is not None:
            action = f"resume from step {attempt['step']} of {cell.train.steps}"
        else:
            action = f"run: train {cell.train.steps} steps and evaluate"
        plan.append((cell, key, action))
    return plan


def _check_writable(results: Path) -> None:
    """The results directory holds the store, caches and checkpoints: fail before anything starts if it cannot."""
    try:
        results.mkdir(parents=True, exist_ok=True)
        probe = results / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"cannot write to the results directory {results} ({e.strerror or type(e).__name__}); run from a "
            "directory where you can write, or set BENCH_RESULTS to one"
        ) from None


def _check_sample_counts(cfg, dataset: Dataset, extractor: Extractor) -> None:
    """FID fits a d-dimensional Gaussian to each side: fewer images than features make it meaningless, so say so
    before training rather than failing every cell after it."""
    dim = extractor.feature_dim
    reference = len(dataset.split(cfg.reference_split)[0])
    if cfg.num_samples <= dim:
        raise ConfigError(
            f"eval.num_samples = {cfg.num_samples} is not more than the {dim} feature dimensions of the "
            f"{extractor.name} extractor, so FID is undefined; raise eval.num_samples above {dim}"
        )
    if reference <= dim:
        raise ConfigError(
            f"the {cfg.reference_split} split of {dataset.name} has {reference} images, not more than the {dim} "
            f"feature dimensions of the {extractor.name} extractor, so FID against it is undefined; use another "
            f"eval.reference_split, a larger dataset or the domain extractor"
        )


def _check_ais(cfg, dataset: Dataset) -> None:
    try:
        check_test_split(cfg.ais, len(dataset.test_images), dataset.name)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def run_real_reference(dataset: Dataset, suite, ctx: SuiteContext) -> None:
    """Log the real-vs-real reference of (dataset, protocol) once: FID floor (held-out vs reference split), real IS,
    KID and precision/recall. Skipped when a FINISHED reference with the same key exists; a failure is recorded and
    the suite goes on."""
    extractor = ctx.extractors[(dataset.name, suite.eval.extractor)]
    cache = ctx.results / "cache"
    ref = reference_features(extractor, dataset, suite.eval.reference_split, cache, suite.eval.batch_size)
    ctx.echo(
        f"reference features of {dataset.name}/{suite.eval.reference_split}: "
        f"{'loaded from the cache' if ref.cached else 'computed'} in {ref.seconds:.1f}s ({ref.path.name})"
    )
    extras = tuple(ctx.extractors[(dataset.name, n)] for n in suite.eval.extra_extractors)
    digests = {
        "references": {
            ex.name: reference_features(ex, dataset, suite.eval.reference_split, cache, suite.eval.batch_size).digest
            for ex in extras
        }
    }
    proto = protocol(suite.eval, dataset, extractor, ref.digest, ctx.device, extras=extra_parts(extras, digests))
    key = bytes_digest([f"real|{dataset.digest}|{fingerprint(proto)}"])[:16]
    if key in ctx.finished:  # decided before any metric is computed: a re-run costs one cached feature load
        return
    try:
        ev = evaluate_real(dataset, suite.eval, extractor, cache, ctx.device, extras)
    except MetricError as e:  # e.g. a test split smaller than the feature dimension: no floor, the cells still run
        ctx.echo(f"real data {dataset.name}: no reference row — {e}")
        return
    run = ctx.tracker.start_run(
        f"{schema.REAL_MODEL}/{dataset.name}",
        {
            schema.SUITE: suite.name,
            schema.MODEL: schema.REAL_MODEL,
            schema.FAMILY: "real",
            schema.DATASET: dataset.name,
            schema.OBSERVATION: dataset.observation,
            schema.SEED: "-",
            schema.CELL: key,
            schema.VARIANT: key,
            schema.PROTOCOL: ev.fingerprint,
        },
        parent=ctx.parent,
    )
    run.log_params(flatten({"eval": dataclasses.asdict(suite.eval)}))
    run.log_dict(ev.protocol, schema.PROTOCOL_ARTIFACT)
    run.log_metrics(
        {
            **ev.metrics,
            schema.EVAL_S: ev.seconds,
            schema.EVAL_REFERENCE_S: ref.seconds,  # the first use of a reference: usually where it is computed
            "eval/reference_cached": float(ref.cached),
        }
    )
    run.log_image(grid(ev.samples), schema.SAMPLES_FINAL)
    run.end("FINISHED")
    n = int(ev.metrics[schema.GENERATED_IMAGES])
    what = "FID floor" if n == suite.eval.num_samples else f"FID at N = {n} (fewer than the models' N: not a floor)"
    ctx.echo(
        f"real data {dataset.name}: {what} {ev.metrics['fid']:.4g} ({n} held-out images vs the "
        f"{suite.eval.reference_split} split), IS {ev.metrics['is_mean']:.4g}"
    )

"""Runs a suite: expand the matrix into cells, check everything they need before training starts, skip cells
already FINISHED with the same `bench.cell` hash, and run each remaining cell data → train → evaluate → tracking.
A failing cell is recorded FAILED with its error and the suite goes on."""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.utils import make_grid

import baselines
from bench import tracking
from bench.ais import check_test_split
from bench.config import BenchConfig, Cell, ConfigError, expand, to_toml
from bench.data import Dataset
from bench.data import load as load_dataset
from bench.evaluate import PeriodicFID, environment, evaluate, evaluate_real, fingerprint, protocol
from bench.executors import EXECUTORS
from bench.features import Extractor, build_extractor, reference_features
from bench.metrics import MetricError
from bench.train import bf16_note, interrupt_on, train


@dataclass
class Outcome:
    cell: Cell
    status: str  # FINISHED | FAILED | SKIPPED | KILLED
    run_id: str | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Context:
    """What every cell of one `bench run` shares."""

    tracker: tracking.Tracker
    parent: tracking.Run
    datasets: dict[str, Dataset]
    extractors: dict[tuple[str, str], Extractor]
    finished: dict[str, str]
    results: Path
    device: torch.device
    progress: bool
    echo: Callable[[str], None]
    uri: str = ""
    mode: str = "process"  # each cell in its own process (executor local), in this one (inline), or a Ray task
    executor: Any = None
    cells_at_once: int = 1  # cells sharing the device (--cells-per-gpu): threads and progress bars are split


# The cells' worker processes now running (local executor), so an interrupt can reach every one of them.
_WORKERS: set = set()
_WORKERS_LOCK = threading.Lock()


def _stop_workers() -> None:
    """Ask every running cell's worker to stop (SIGTERM: it finishes its step, checkpoints and reports KILLED)."""
    with _WORKERS_LOCK:
        procs = list(_WORKERS)
    for proc in procs:
        if proc.is_alive() and proc.pid:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


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
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; known: {', '.join(EXECUTORS)}")
    if executor == "ray":
        runner = EXECUTORS[executor](ray_address, uri, cells_per_gpu)
    else:
        runner = EXECUTORS[executor](cells_per_gpu)

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
            "bench.suite": suite.name,
            "bench.parent": "true",
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
    ctx = Context(
        tracker,
        parent,
        datasets,
        extractors,
        finished,
        results,
        device,
        progress,
        echo,
        uri=uri,
        mode=runner.mode,
        executor=runner,
        cells_at_once=cells_per_gpu,
    )
    outcomes: list[Outcome] = []
    try:
        for name in suite.datasets:
            run_real_reference(datasets[name], suite, ctx)
        jobs = [(i, len(cells), cell, ctx) for i, cell in enumerate(cells, 1)]
        start = time.perf_counter()
        outcomes = runner.map(_run_cell_job, jobs, on_interrupt=_stop_workers)
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


REAL_MODEL = tracking.REAL_MODEL


def run_real_reference(dataset: Dataset, suite, ctx: Context) -> None:
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
    proto_fingerprint = fingerprint(protocol(suite.eval, dataset, extractor, ref.digest, ctx.device))
    key = hashlib.sha256(f"real|{dataset.digest}|{proto_fingerprint}".encode()).hexdigest()[:16]
    if key in ctx.finished:  # decided before any metric is computed: a re-run costs one cached feature load
        return
    try:
        ev = evaluate_real(dataset, suite.eval, extractor, cache, ctx.device)
    except MetricError as e:  # e.g. a test split smaller than the feature dimension: no floor, the cells still run
        ctx.echo(f"real data {dataset.name}: no reference row — {e}")
        return
    run = ctx.tracker.start_run(
        f"{REAL_MODEL}/{dataset.name}",
        {
            "bench.suite": suite.name,
            "bench.model": REAL_MODEL,
            "bench.family": "real",
            "bench.dataset": dataset.name,
            "bench.seed": "-",
            "bench.cell": key,
            "bench.variant": key,
            "bench.protocol": ev.fingerprint,
        },
        parent=ctx.parent,
    )
    run.log_params(flatten({"eval": dataclasses.asdict(suite.eval)}))
    run.log_dict(ev.protocol, "protocol.json")
    run.log_metrics(
        {
            **ev.metrics,
            "time/eval_s": ev.seconds,
            "time/eval_reference_s": ref.seconds,  # the first use of a reference: usually where it is computed
            "eval/reference_cached": float(ref.cached),
        }
    )
    run.log_image(_grid(ev.samples), "samples/final.png")
    run.end("FINISHED")
    ctx.echo(
        f"real data {dataset.name}: FID floor {ev.metrics['fid']:.4g} ({int(ev.metrics['real_images'])} held-out "
        f"images vs the {suite.eval.reference_split} split), IS {ev.metrics['is_mean']:.4g}"
    )


def _run_cell_job(job: tuple) -> Outcome:
    index, total, cell, ctx = job
    return run_cell(cell, ctx, f"[{index}/{total}]")


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def run_cell(cell: Cell, ctx: Context, label: str = "") -> Outcome:
    dataset = ctx.datasets[cell.dataset]
    key = cell.key(dataset.digest)
    if key in ctx.finished:
        ctx.echo(f"{label} {cell.name}: already FINISHED (run {ctx.finished[key]}), skipped")
        return Outcome(cell, "SKIPPED", ctx.finished[key])
    ctx.echo(f"{label} {cell.name}: training {cell.train.steps} steps ...")
    model_cls = baselines.MODELS[cell.model]
    previous = (interrupted_attempt(ctx.results, key) or {}).get("run_id")
    run = ctx.tracker.reopen_run(previous, key) if previous else None
    if run is not None:
        ctx.echo(f"{label} {cell.name}: continuing its interrupted run {run.run_id}")
    else:
        run = ctx.tracker.start_run(
            cell.name,
            {
                "bench.suite": cell.suite,
                "bench.model": cell.model,
                "bench.family": model_cls.family,
                "bench.dataset": cell.dataset,
                "bench.seed": cell.seed,
                "bench.cell": key,
                "bench.variant": cell.key(dataset.digest, with_seed=False),
            },
            parent=ctx.parent,
        )
    if ctx.mode == "ray":
        return _run_on_ray(cell, key, run, ctx, label)
    if ctx.mode == "process":
        return _run_in_worker(cell, key, run, ctx, label)
    run.set_tags(tracking.owner_tags(os.getpid()))
    return _execute(cell, key, dataset, ctx, run, model_cls, label)


def checkpoint_path(results: Path, key: str) -> Path:
    return results / "checkpoints" / key / "last.pt"


def interrupted_attempt(results: Path, key: str) -> dict | None:
    """The step and MLflow run id an interrupted attempt of this cell saved in its checkpoint; None without one (or
    with an unreadable one: train() says so, and the cell gets a new run)."""
    path = checkpoint_path(results, key)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:
        return None
    return {"step": state["step"], "run_id": state.get("run_id")}


def _execute(cell: Cell, key: str, dataset: Dataset, ctx: Context, run: tracking.Run, model_cls, label: str) -> Outcome:
    """Train and evaluate one cell into its run, with MLflow's system metrics sampled meanwhile; an exception marks
    the run FAILED (KILLED on an interrupt)."""
    start = time.perf_counter()
    resumed = checkpoint_path(ctx.results, key).is_file()
    try:
        with run.system_metrics(ctx.uri, resume=resumed):
            metrics = _train_and_evaluate(cell, key, dataset, ctx, run, model_cls)
    except KeyboardInterrupt as e:
        run.set_tags({"bench.error": f"interrupted ({e or 'KeyboardInterrupt'}); run the same command to resume"})
        run.end("KILLED")
        raise
    except Exception as e:
        message = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        run.set_tags({"bench.error": message})
        run.log_text(traceback.format_exc(), "error.txt")
        run.end("FAILED")
        ctx.echo(f"{label} {cell.name}: FAILED — {message}")
        return Outcome(cell, "FAILED", run.run_id, message, seconds=time.perf_counter() - start)
    run.end("FINISHED")
    seconds = time.perf_counter() - start
    shown = ("fid", "is_mean", "elbo", "nll_iwae", "nll_ais", "ais/bdmc_gap")
    summary = ", ".join(f"{k} {metrics[k]:.4g}" for k in shown if k in metrics)
    ctx.echo(f"{label} {cell.name}: FINISHED in {seconds:.0f}s — {summary}")
    return Outcome(cell, "FINISHED", run.run_id, metrics=metrics, seconds=seconds)


def _run_in_worker(cell: Cell, key: str, run: tracking.Run, ctx: Context, label: str) -> Outcome:
    """The cell in a fresh process (spawned: CUDA-safe), so a crash, an out-of-memory kill or a segfault there
    cannot take the suite down: the run is recorded FAILED with how the process ended, and the suite goes on."""
    spec = _spec(cell, key, run, ctx, label)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "outcome.json"
        proc = multiprocessing.get_context("spawn").Process(
            target=_cell_worker, args=(spec, str(result)), name=f"bench {cell.name}"
        )
        proc.start()
        with _WORKERS_LOCK:
            _WORKERS.add(proc)
        run.set_tags(tracking.owner_tags(proc.pid))
        try:
            proc.join()
        except KeyboardInterrupt:
            # A Ctrl-C reached the worker too, a `kill` of this process did not: ask it to stop in any case (for a
            # worker already stopping, a repeated SIGTERM is the same request), then let it checkpoint and close
            # its run.
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
            proc.join(timeout=120)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
            if run.status() == "RUNNING":
                run.set_tags({"bench.error": "interrupted; run the same command to resume"})
                run.end("KILLED")
            raise
        finally:
            with _WORKERS_LOCK:
                _WORKERS.discard(proc)
        if result.is_file():
            return _reported(cell, run, json.loads(result.read_text()))
    message = _describe_exit(proc.exitcode)
    if run.status() == "RUNNING":
        run.set_tags({"bench.error": message})
        run.log_text(f"{message}\n(the worker process of {cell.name} ended without reporting a result)\n", "error.txt")
        run.end("FAILED")
    ctx.echo(f"{label} {cell.name}: FAILED — {message}")
    return Outcome(cell, "FAILED", run.run_id, message, seconds=time.perf_counter() - start)


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"the cell's worker process was killed by {name}{hint}"
    return f"the cell's worker process exited with code {code} without reporting a result"


def _cell_worker(spec: dict, result_path: str) -> None:
    """Entry point of a cell's own process: run the cell, report the outcome as JSON. SIGINT and SIGTERM interrupt
    the cell; a SIGTERM after the first signal is the same request (the suite's process forwards one after a
    Ctrl-C that reached both)."""
    with interrupt_on(signal.SIGINT, signal.SIGTERM):
        report = _work(spec)
        Path(result_path).write_text(json.dumps(report))


def _work(spec: dict) -> dict:
    """A cell away from the driver (its own process, or a Ray task): rebuild what it needs (dataset, cached
    extractors), run it into the run the driver created, return the outcome as a plain dict."""
    torch.set_num_threads(spec["threads"])
    cell: Cell = spec["cell"]
    results, device = Path(spec["results"]), torch.device(spec["device"])
    dataset = load_dataset(cell.dataset)
    extractors = {}
    for name in {cell.eval.extractor, "domain"} if cell.train.eval_every else {cell.eval.extractor}:
        extractors[(cell.dataset, name)] = build_extractor(name, dataset, cell.domain, results / "cache", device)
    run = tracking.attach_run(spec["uri"], spec["run_id"])
    echo = functools.partial(print, flush=True)
    ctx = Context(
        None, None, {cell.dataset: dataset}, extractors, {}, results, device, spec["progress"], echo, uri=spec["uri"]
    )
    model_cls = baselines.MODELS[cell.model]
    try:
        outcome = _execute(cell, spec["key"], dataset, ctx, run, model_cls, spec["label"])
    except KeyboardInterrupt:
        return {"status": "KILLED", "error": "interrupted", "metrics": {}, "seconds": 0.0}
    return {"status": outcome.status, "error": outcome.error, "metrics": outcome.metrics, "seconds": outcome.seconds}


def _run_on_ray(cell: Cell, key: str, run: tracking.Run, ctx: Context, label: str) -> Outcome:
    """The cell as a Ray task; a task that dies (worker crash, node lost) is recorded FAILED like a dead process."""
    ray = ctx.executor.ray
    device = "cuda" if ctx.executor.gpus and cell.train.device != "cpu" else "cpu"
    spec = _spec(cell, key, run, ctx, label) | {"device": device, "threads": 1}
    run.set_tags({"bench.executor": "ray", **tracking.owner_tags(os.getpid())})  # a local cluster dies with us
    start = time.perf_counter()
    ref = ctx.executor.task(_work).remote(spec)
    try:
        out = ray.get(ref)
    except KeyboardInterrupt:
        ray.cancel(ref)
        run.set_tags({"bench.error": "interrupted; run the same command to resume"})
        run.end("KILLED")
        raise
    except Exception as e:  # ray.exceptions.RayTaskError / WorkerCrashedError / ...
        message = f"the cell's Ray task failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
        if run.status() == "RUNNING":
            run.set_tags({"bench.error": message})
            run.end("FAILED")
        ctx.echo(f"{label} {cell.name}: FAILED — {message}")
        return Outcome(cell, "FAILED", run.run_id, message, seconds=time.perf_counter() - start)
    return _reported(cell, run, out)


def _reported(cell: Cell, run: tracking.Run, out: dict) -> Outcome:
    """The Outcome a worker or Ray task reported (`_work`); an interrupted cell stops the suite."""
    if out["status"] == "KILLED":
        raise KeyboardInterrupt(f"{cell.name} was interrupted")
    return Outcome(cell, out["status"], run.run_id, out["error"], out["metrics"], out["seconds"])


def _spec(cell: Cell, key: str, run: tracking.Run, ctx: Context, label: str) -> dict:
    return {
        "cell": cell,
        "key": key,
        "run_id": run.run_id,
        "uri": ctx.uri,
        "results": str(ctx.results.resolve()),
        "device": str(ctx.device),
        "progress": ctx.progress and ctx.cells_at_once == 1,  # several cells' bars would garble one terminal
        "label": label,
        "threads": max(1, torch.get_num_threads() // ctx.cells_at_once),
    }


def _train_and_evaluate(cell: Cell, key: str, dataset: Dataset, ctx: Context, run: tracking.Run, model_cls) -> dict:
    cell_dict = cell.as_dict()
    run.log_params(flatten(cell_dict))
    run.log_text(to_toml(cell_dict), "config.toml")
    run.log_dict(environment(ctx.device), "environment.json")
    run.log_dataset(dataset.name, dataset.digest, dataset.source)

    torch.manual_seed(cell.seed)
    model = baselines.build(cell.model, cell.model_config, dataset.image_shape, dataset.observation).to(ctx.device)
    images = dataset.train_images.to(ctx.device)  # the whole split stays on the device; batches are index draws
    checkpoint = checkpoint_path(ctx.results, key)
    best_path = checkpoint.with_name("best.pt")
    if not checkpoint.is_file():
        best_path.unlink(missing_ok=True)  # a fresh start: no best from an earlier attempt without a checkpoint
    evaluator = None
    if cell.train.eval_every:
        domain = ctx.extractors[(cell.dataset, "domain")]
        ref = reference_features(domain, dataset, cell.eval.reference_split, ctx.results / "cache")
        evaluator = PeriodicFID(
            domain, ref.features, cell.train.eval_samples, cell.eval.batch_size, cell.eval.seed, best_path
        )
    logger = _CellLogger(run)
    result = train(
        model,
        images,
        cell.train,
        seed=cell.seed,
        logger=logger,
        checkpoint=checkpoint,
        config=cell_dict,
        progress=ctx.progress,
        evaluator=evaluator,
        run_id=run.run_id,
    )
    if result.resumed_from:
        run.set_tags({"bench.resumed_from_step": result.resumed_from})
        ctx.echo(f"    resumed from its checkpoint at step {result.resumed_from} (an interrupted earlier attempt)")

    ctx.echo("    evaluating the final checkpoint ...")
    extractor = ctx.extractors[(cell.dataset, cell.eval.extractor)]
    ev = evaluate(model, dataset, cell.eval, extractor, ctx.results / "cache", ctx.echo)
    metrics = dict(ev.metrics)
    metrics.update(
        {
            "time/train_s": result.seconds,
            "time/eval_s": ev.seconds,
            "time/eval_reference_s": ev.reference.seconds,
            "eval/reference_cached": float(ev.reference.cached),
            "throughput/train_images_per_s": result.images_per_s,
            "extractor/test_accuracy": extractor.info.get("test_accuracy", float("nan")),
        }
    )
    run.set_tags({"bench.protocol": ev.fingerprint})
    run.log_dict(ev.protocol, "protocol.json")
    if "ais" in ev.details:
        run.log_dict(ev.details["ais"], "ais.json")
    run.log_metrics(metrics, step=result.steps)
    run.log_image(_grid(ev.samples[:64]), "samples/final.png")
    if model_cls.family == "vae":
        x = dataset.test_images[:32].to(ctx.device).float() / 255.0
        recon = model.reconstruct(x).cpu()
        pairs = torch.stack([dataset.test_images[:32], recon], dim=1).flatten(0, 1)  # original, reconstruction, ...
        run.log_image(_grid(pairs), "reconstructions.png")
    with tempfile.TemporaryDirectory() as tmp:
        final = Path(tmp) / "final.pt"
        torch.save({"model": model.state_dict(), "config": cell_dict, "step": result.steps}, final)
        run.log_file(final, "checkpoints")
    if best_path.is_file():
        metrics.update(_evaluate_best(model, best_path, result.steps, ev, dataset, cell, extractor, ctx, run))
        best_path.unlink()
    checkpoint.unlink(missing_ok=True)  # the finished run holds the final and best checkpoints
    if checkpoint.parent.is_dir() and not any(checkpoint.parent.iterdir()):
        checkpoint.parent.rmdir()
    metrics["time/tracking_s"] = run.seconds  # every MLflow call of the cell so far, artifacts included
    run.log_metrics({"time/tracking_s": metrics["time/tracking_s"]}, step=result.steps)
    return metrics


def _evaluate_best(model, best_path: Path, final_step: int, final, dataset, cell, extractor, ctx, run) -> dict:
    """Full evaluation of the checkpoint with the lowest periodic FID, logged as best/<metric> with best/step. When
    the best is the final step, the final evaluation is reused rather than repeated."""
    state = torch.load(best_path, map_location="cpu", weights_only=True)
    if state["step"] == final_step:
        ev = final
    else:
        ctx.echo(f"    evaluating the best checkpoint (step {state['step']}, periodic FID {state['fid']:.4g}) ...")
        best_model = copy.deepcopy(model)
        best_model.load_state_dict(state["model"])
        ev = evaluate(best_model, dataset, cell.eval, extractor, ctx.results / "cache", ctx.echo)
        if ev.fingerprint != final.fingerprint:  # same cfg and extractor: cannot differ unless the cache changed
            raise RuntimeError("the best checkpoint was evaluated under another protocol than the final one")
    metrics = {f"best/{k}": v for k, v in ev.metrics.items()}
    metrics.update(
        {
            "best/step": state["step"],
            "best/periodic_fid": state["fid"],
            "time/eval_best_s": 0.0 if ev is final else ev.seconds,
        }
    )
    run.log_metrics(metrics, step=final_step)
    run.log_image(_grid(ev.samples[:64]), "samples/best.png")
    run.log_file(best_path, "checkpoints")
    return metrics


def _grid(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, C, H, W) → one (H', W', C) uint8 grid image, 8 per row."""
    grid = make_grid(images, nrow=8, padding=2, pad_value=128)  # (C, H', W') uint8
    return grid.permute(1, 2, 0).numpy()


@dataclass
class _CellLogger:
    """The training loop's logger: step metrics and periodic sample grids into the cell's run."""

    run: tracking.Run

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log_metrics(metrics, step)

    def log_samples(self, images: torch.Tensor, step: int) -> None:
        self.run.log_image_step(_grid(images), "samples", step)  # MLflow's image view: a slider over the steps

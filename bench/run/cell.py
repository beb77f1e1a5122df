"""One cell's pipeline: open (or reopen) its MLflow run, train, evaluate the final checkpoint and the best one,
log everything into the run. How the pipeline is run (in this process, a worker process, a Ray task) is the
executors' business (bench/executors.py); which cells run is the runner's (bench/runner.py)."""

from __future__ import annotations

import copy
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

import baselines
from bench import schema, tracking
from bench.config import Cell
from bench.data import Dataset
from bench.devices import environment
from bench.eval.encoders import Extractor, reference_features
from bench.eval.pipeline import (
    SELECTION_KEY,
    PeriodicFID,
    evaluate,
    held_out_split,
    nearest_grid,
    selection_protocol,
)
from bench.run.train import train
from bench.typed_toml import to_toml


@dataclass
class Outcome:
    cell: Cell
    status: str  # FINISHED | FAILED | SKIPPED | KILLED
    run_id: str | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class SuiteContext:
    """What every cell of one `bench run` shares."""

    tracker: tracking.Tracker | None  # None in a worker process or Ray task (the driver opened the cell's run)
    parent: tracking.Run | None
    datasets: dict[str, Dataset]
    extractors: dict[tuple[str, str], Extractor]
    finished: dict[str, str]
    results: Path
    device: torch.device
    progress: bool
    echo: Callable[[str], None]
    uri: str = ""
    cells_at_once: int = 1  # cells sharing the device (--cells-per-gpu): threads and progress bars are split


@dataclass
class CellJob:
    """A cell ready to run: its key and the MLflow run it logs into (opened by the driver)."""

    cell: Cell
    key: str
    run: tracking.Run
    label: str = ""  # "[3/8]": where it stands in the suite


def open_cell(cell: Cell, ctx: SuiteContext, label: str = "") -> Outcome | CellJob:
    """SKIPPED when a FINISHED run of the same key exists; otherwise the cell's run (its interrupted attempt's run,
    reopened, or a new one under the suite's parent run), ready for an executor."""
    dataset = ctx.datasets[cell.dataset]
    key = cell.key(dataset.digest)
    if key in ctx.finished:
        ctx.echo(f"{label} {cell.name}: already FINISHED (run {ctx.finished[key]}), skipped")
        return Outcome(cell, "SKIPPED", ctx.finished[key])
    ctx.echo(f"{label} {cell.name}: training {cell.train.steps} steps ...")
    previous = (interrupted_attempt(ctx.results, key) or {}).get("run_id")
    run = ctx.tracker.reopen_run(previous, key) if previous else None
    if run is not None:
        ctx.echo(f"{label} {cell.name}: continuing its interrupted run {run.run_id}")
    else:
        run = ctx.tracker.start_run(
            cell.name,
            {
                schema.SUITE: cell.suite,
                schema.MODEL: cell.model,
                schema.FAMILY: baselines.get(cell.model, cell.model_source).family,
                schema.DATASET: cell.dataset,
                schema.OBSERVATION: dataset.observation,
                schema.SEED: cell.seed,
                schema.CELL: key,
                schema.VARIANT: cell.key(dataset.digest, with_seed=False),
            },
            parent=ctx.parent,
        )
    return CellJob(cell, key, run, label)


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


def execute(job: CellJob, ctx: SuiteContext) -> Outcome:
    """Train and evaluate one cell into its run, with MLflow's system metrics sampled meanwhile; an exception marks
    the run FAILED (KILLED on an interrupt)."""
    cell, key, run, label = job.cell, job.key, job.run, job.label
    start = time.perf_counter()
    resumed = checkpoint_path(ctx.results, key).is_file()
    try:
        with run.system_metrics(ctx.uri, resume=resumed):
            metrics = train_and_evaluate(job, ctx)
    except KeyboardInterrupt as e:
        run.set_tags({schema.ERROR: f"interrupted ({e or 'KeyboardInterrupt'}); run the same command to resume"})
        run.end("KILLED")
        raise
    except Exception as e:
        message = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        run.set_tags({schema.ERROR: message})
        run.log_text(traceback.format_exc(), schema.ERROR_ARTIFACT)
        run.end("FAILED")
        ctx.echo(f"{label} {cell.name}: FAILED — {message}")
        return Outcome(cell, "FAILED", run.run_id, message, seconds=time.perf_counter() - start)
    run.end("FINISHED")
    seconds = time.perf_counter() - start
    summary = ", ".join(f"{k} {metrics[k]:.4g}" for k in schema.SHOWN if k in metrics)
    ctx.echo(f"{label} {cell.name}: FINISHED in {seconds:.0f}s — {summary}")
    return Outcome(cell, "FINISHED", run.run_id, metrics=metrics, seconds=seconds)


def train_and_evaluate(job: CellJob, ctx: SuiteContext) -> dict:
    """Train the cell from scratch or from its checkpoint, evaluate the final and the best checkpoint, log the
    metrics, samples and checkpoints into its run; returns the final metrics."""
    cell, key, run = job.cell, job.key, job.run
    dataset = ctx.datasets[cell.dataset]
    cell_dict = cell.as_dict()
    run.log_params(flatten(cell_dict))
    run.log_text(to_toml(cell_dict), schema.CONFIG_ARTIFACT)
    run.log_dict(environment(ctx.device), schema.ENVIRONMENT_ARTIFACT)
    run.log_dataset(dataset.name, dataset.digest, dataset.source)

    torch.manual_seed(cell.seed)
    model = baselines.build(
        cell.model, cell.model_config, dataset.image_shape, dataset.observation, cell.model_source
    ).to(ctx.device)
    images = dataset.train_images.to(ctx.device)  # the whole split stays on the device; batches are index draws
    checkpoint = checkpoint_path(ctx.results, key)
    best_path = checkpoint.with_name("best.pt")
    if not checkpoint.is_file():
        best_path.unlink(missing_ok=True)  # a fresh start: no best from an earlier attempt without a checkpoint
    evaluator = None
    if cell.train.eval_every:
        domain = ctx.extractors[(cell.dataset, "domain")]  # selection (schema.SELECTION_RULE): the held-out split
        ref = reference_features(domain, dataset, held_out_split(cell.eval), ctx.results / "cache")
        seed = cell.eval.seed + schema.SELECTION_SEED_OFFSET
        evaluator = PeriodicFID(domain, ref.features, cell.train.eval_samples, cell.eval.batch_size, seed, best_path)
    logger = CellLogger(run)
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
        run.set_tags({schema.RESUMED_FROM: result.resumed_from})
        ctx.echo(f"    resumed from its checkpoint at step {result.resumed_from} (an interrupted earlier attempt)")

    ctx.echo("    evaluating the final checkpoint ...")
    extractor = ctx.extractors[(cell.dataset, cell.eval.extractor)]
    extras = tuple(ctx.extractors[(cell.dataset, name)] for name in cell.eval.extra_extractors)
    ev = evaluate(model, dataset, cell.eval, extractor, ctx.results / "cache", ctx.echo, extras)
    metrics = dict(ev.metrics)
    metrics.update(
        {
            schema.TRAIN_S: result.seconds,
            schema.EVAL_S: ev.seconds,
            schema.EVAL_REFERENCE_S: ev.reference.seconds,
            "eval/reference_cached": float(ev.reference.cached),
            schema.TRAIN_IMAGES_PER_S: result.images_per_s,
            "extractor/test_accuracy": extractor.info.get("test_accuracy", float("nan")),
        }
    )
    run.set_tags({schema.PROTOCOL: ev.fingerprint})
    proto = ev.protocol
    if evaluator is not None:
        proto = {**proto, SELECTION_KEY: selection_protocol(cell.train, cell.eval)}
    run.log_dict(proto, schema.PROTOCOL_ARTIFACT)
    if "ais" in ev.details:
        run.log_dict(ev.details["ais"], schema.AIS_ARTIFACT)
    run.log_metrics(metrics, step=result.steps)
    run.log_image(grid(ev.samples[:64]), schema.SAMPLES_FINAL)
    run.log_image(grid(nearest_grid(*ev.details["nearest"]), per_row=4), schema.NEAREST_TRAIN)
    if model.family == "vae":
        x = dataset.test_images[:32].to(ctx.device).float() / 255.0
        recon = model.reconstruct(x).cpu()
        pairs = torch.stack([dataset.test_images[:32], recon], dim=1).flatten(0, 1)  # original, reconstruction, ...
        run.log_image(grid(pairs), schema.RECONSTRUCTIONS)
    with tempfile.TemporaryDirectory() as tmp:
        final = Path(tmp) / "final.pt"
        torch.save({"model": model.state_dict(), "config": cell_dict, "step": result.steps}, final)
        run.log_file(final, schema.CHECKPOINTS_DIR)
    run.log_model(model, schema.MODEL_FINAL, _model_metadata(cell, result.steps))
    if best_path.is_file():
        metrics.update(evaluate_best(model, best_path, result.steps, ev, dataset, cell, (extractor, *extras), ctx, run))
        best_path.unlink()
    checkpoint.unlink(missing_ok=True)  # the finished run holds the final and best checkpoints
    if checkpoint.parent.is_dir() and not any(checkpoint.parent.iterdir()):
        checkpoint.parent.rmdir()
    metrics[schema.TRACKING_S] = run.seconds  # every MLflow call of the cell so far, artifacts included
    run.log_metrics({schema.TRACKING_S: metrics[schema.TRACKING_S]}, step=result.steps)
    return metrics


def evaluate_best(model, best_path: Path, final_step: int, final, dataset, cell, extractors, ctx, run) -> dict:
    """Full evaluation of the checkpoint with the lowest periodic FID, logged as best/<metric> with best/step. When
    the best is the final step, the final evaluation is reused rather than repeated."""
    state = torch.load(best_path, map_location="cpu", weights_only=True)
    best_model = model
    if state["step"] == final_step:
        ev = final
    else:
        ctx.echo(f"    evaluating the best checkpoint (step {state['step']}, periodic FID {state['fid']:.4g}) ...")
        best_model = copy.deepcopy(model)
        best_model.load_state_dict(state["model"])
        cache = ctx.results / "cache"
        ev = evaluate(best_model, dataset, cell.eval, extractors[0], cache, ctx.echo, tuple(extractors[1:]))
        if ev.fingerprint != final.fingerprint:  # same cfg and extractor: cannot differ unless the cache changed
            raise RuntimeError("the best checkpoint was evaluated under another protocol than the final one")
    metrics = {f"{schema.BEST_PREFIX}{k}": v for k, v in ev.metrics.items()}
    metrics.update(
        {
            schema.BEST_STEP: state["step"],
            "best/periodic_fid": state["fid"],
            schema.EVAL_BEST_S: 0.0 if ev is final else ev.seconds,
        }
    )
    run.log_metrics(metrics, step=final_step)
    run.log_image(grid(ev.samples[:64]), schema.SAMPLES_BEST)
    run.log_file(best_path, schema.CHECKPOINTS_DIR)
    run.log_model(best_model, schema.MODEL_BEST, _model_metadata(cell, state["step"]))
    return metrics


def _model_metadata(cell: Cell, step: int) -> dict[str, str]:
    return {
        "bench.model": cell.model,
        "bench.dataset": cell.dataset,
        "bench.seed": str(cell.seed),
        "step": str(step),
        "source": cell.model_source or "genbench baselines",
    }


def grid(images: torch.Tensor, per_row: int = 8) -> np.ndarray:
    """uint8 (N, C, H, W) → one (H', W', C) uint8 grid image, `per_row` images per row."""
    tiled = make_grid(images, nrow=per_row, padding=2, pad_value=128)  # (C, H', W') uint8
    return tiled.permute(1, 2, 0).numpy()


@dataclass
class CellLogger:
    """The training loop's logger: step metrics and periodic sample grids into the cell's run."""

    run: tracking.Run

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log_metrics(metrics, step)

    def log_samples(self, images: torch.Tensor, step: int) -> None:
        self.run.log_image_step(grid(images), schema.SAMPLES_BY_STEP, step)  # MLflow's image view: a step slider


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out

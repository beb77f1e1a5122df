"""One cell's pipeline: open (or reopen) its MLflow run, train, evaluate the final checkpoint and the best one, log
everything into the run. How the pipeline is run (in this process, a worker process, a Ray task) is the executors'
business (bench/run/executors.py); which cells run is the suite's (bench/run/suite.py)."""

from __future__ import annotations

import copy
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

import baselines
from bench import schema, tracking
from bench.config import DomainConfig, EvalConfig
from bench.data import Dataset
from bench.devices import environment
from bench.eval.encoders import Encoder, build_encoder
from bench.eval.pipeline import Evaluation, PeriodicFID, evaluate, generate, validation_fid
from bench.eval.protocol import SELECTION_KEY, selection_protocol
from bench.eval.real_features import RealFeatures, real_features
from bench.run import checkpoints
from bench.run.matrix import Cell
from bench.run.record import flatten, grid, record
from bench.run.train import TrainResult, train
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
class CellContext:
    """What a cell needs wherever it runs (the suite's process, a worker process, a Ray task): the datasets, the
    real features of each (dataset, encoder) (`Cell.encoders`), where results go and how to report."""

    datasets: dict[str, Dataset]
    real: dict[tuple[str, str], RealFeatures]
    results: Path
    device: torch.device
    uri: str
    progress: bool = True
    echo: Callable[[str], None] = print
    cells_at_once: int = 1  # cells sharing the device (--cells-per-gpu): threads and progress bars are split

    def scoring(self, dataset: str, cfg: EvalConfig) -> tuple[RealFeatures, ...]:
        """The bundles of the encoders that score samples of `dataset` under `cfg`, the first one first."""
        return tuple(self.real[(dataset, name)] for name in cfg.encoders)


@dataclass
class SuiteRun:
    """The suite's own state, in the suite's process only: the experiment, its parent run, the finished cells."""

    tracker: tracking.Tracker
    parent: tracking.Run
    finished: dict[str, str]  # bench.cell key → run id


@dataclass
class CellJob:
    """A cell ready to run: its key and the MLflow run it logs into (opened by the suite's process)."""

    cell: Cell
    key: str
    run: tracking.Run
    label: str = ""  # "[3/8]": where it stands in the suite
    holder: str = ""  # the random id of the claim (schema.HOLDER): the lease's fence
    lease: tracking.Lease | None = None  # while the cell runs (execute)


ELSEWHERE = "ELSEWHERE"  # an Outcome's status while another process trains the cell (run_suite waits for it)
UNREACHABLE = "UNREACHABLE"  # the tracking server stopped answering: nothing more written, the checkpoint kept


def prepare_real(
    dataset: Dataset,
    names: tuple[str, ...],
    cfg: EvalConfig,
    domain: DomainConfig,
    cache: Path,
    device: torch.device,
    *,
    scoring: tuple[str, ...],
    echo: Callable[[str], None] | None = None,
    loaded: dict | None = None,
    check: Callable[[Encoder], None] | None = None,
) -> dict[tuple[str, str], RealFeatures]:
    """The real features of `dataset` in each encoder of `names` (built, or taken from `loaded`, a worker's memory
    of earlier cells); the copying test's cells only for the encoders in `scoring`. `check` sees each encoder once
    it is built, before its features are computed (the suite's preflight: seconds, not minutes, to an error). The
    encoders and features are cached in `cache` (`storage.cache_dir()`). With `echo`, says what each took."""
    loaded = {} if loaded is None else loaded
    out = {}
    for name in names:
        key = ("real", dataset.name, dataset.digest, name, repr(cfg), repr(domain), str(cache), str(device))
        if key not in loaded:
            if echo:
                echo(f"encoder {name} for {dataset.name} ...")
            encoder = build_encoder(name, dataset, domain, cache, device)
            if echo and "test_accuracy" in encoder.info:
                echo(f"  test accuracy {encoder.info['test_accuracy']:.4f}")
            if check:
                check(encoder)
            loaded[key] = real_features(encoder, dataset, cfg, cache, copying=name in scoring)
            if echo:
                r = loaded[key]
                how = "loaded from the cache" if r.reference.cached else "computed"
                echo(
                    f"  reference features of {dataset.name}/{cfg.reference_split}: {how} in {r.reference.seconds:.1f}s"
                    f" ({r.reference.path.name})"
                )
                if r.copying is not None:
                    echo(f"copying-test cells of {dataset.name} in {name} features: ready in {r.copying_seconds:.1f}s")
        out[(dataset.name, name)] = loaded[key]
    return out


def execute(job: CellJob, ctx: CellContext) -> Outcome:
    """Train and evaluate one cell into its run, with MLflow's system metrics sampled meanwhile; an exception marks
    the run FAILED (KILLED on an interrupt)."""
    cell, key, run, label = job.cell, job.key, job.run, job.label
    start = time.perf_counter()
    resumed = checkpoints.checkpoint_path(ctx.results, key).is_file()
    try:
        with run.heartbeat(job.holder) as job.lease, run.system_metrics(resume=resumed, fence=job.lease.lost):
            metrics = train_and_evaluate(job, ctx)
            job.lease.check()  # FINISHED only while this process holds the cell
    except tracking.LeaseLost as e:  # another process holds the cell now: write nothing more to its run
        if job.lease.unreachable and not tracking.answers(ctx.uri):
            return _unreachable(job, ctx, str(e), start)
        ctx.echo(f"{label} {cell.name}: stopped, writing nothing more: {e}; its holder finishes it")
        return Outcome(cell, ELSEWHERE, run.run_id, str(e), seconds=time.perf_counter() - start)
    except KeyboardInterrupt as e:
        run.set_tags({schema.ERROR: f"interrupted ({e or 'KeyboardInterrupt'}); run the same command to resume"})
        run.end("KILLED")
        raise
    except Exception as e:
        message = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        if not tracking.answers(ctx.uri):  # recording FAILED would wait minutes in retries, then fail too
            return _unreachable(job, ctx, message, start)
        run.set_tags({schema.ERROR: message})
        run.log_text(traceback.format_exc(), schema.ERROR_ARTIFACT)
        run.end("FAILED")
        ctx.echo(f"{label} {cell.name}: FAILED — {message}")
        return Outcome(cell, "FAILED", run.run_id, message, seconds=time.perf_counter() - start)
    run.end("FINISHED")
    # only now: until FINISHED is recorded, an interruption resumes from these (the run holds final.pt and best.pt)
    checkpoints.remove(checkpoints.checkpoint_path(ctx.results, key))
    seconds = time.perf_counter() - start
    summary = ", ".join(f"{k} {metrics[k]:.4g}" for k in schema.SHOWN if k in metrics)
    ctx.echo(f"{label} {cell.name}: FINISHED in {seconds:.0f}s — {summary}")
    return Outcome(cell, "FINISHED", run.run_id, metrics=metrics, seconds=seconds)


def _unreachable(job: CellJob, ctx: CellContext, why: str, start: float) -> Outcome:
    """The tracking server stopped answering: the cell stops writing; its local checkpoint stays for a resume."""
    ctx.echo(f"{job.label} {job.cell.name}: stopped: the tracking server does not answer ({why}); its checkpoint is "
             "kept")  # fmt: skip
    return Outcome(job.cell, UNREACHABLE, job.run.run_id, why, seconds=time.perf_counter() - start)


def train_and_evaluate(job: CellJob, ctx: CellContext) -> dict:
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
    checkpoint = checkpoints.checkpoint_path(ctx.results, key)
    best_path = checkpoint.with_name("best.pt")
    if not checkpoint.is_file():
        best_path.unlink(missing_ok=True)  # a fresh start: no best from an earlier attempt without a checkpoint
    result = _train(job, ctx, model, checkpoint, best_path, cell_dict)
    if cell.is_trial:
        return _score_trial(job, ctx, model, result, checkpoint)

    ctx.echo("    evaluating the final checkpoint ...")
    real = ctx.scoring(cell.dataset, cell.eval)
    ev = evaluate(model, dataset, cell.eval, real, ctx.echo)
    metrics = {
        **ev.metrics,
        schema.TRAIN_S: result.seconds,
        schema.EVAL_S: ev.seconds,
        schema.EVAL_REFERENCE_S: real[0].reference.seconds,
        schema.REFERENCE_CACHED: float(real[0].reference.cached),
        schema.TRAIN_IMAGES_PER_S: result.images_per_s,
        schema.ENCODER_ACCURACY: real[0].encoder.info.get("test_accuracy", float("nan")),
    }
    proto = {**ev.protocol, SELECTION_KEY: selection_protocol(cell.train, cell.eval)} if cell.train.eval_every else None
    if job.lease is not None:
        job.lease.check()  # the final evaluation took minutes: still this process's cell?
    model_id = run.log_model(model, schema.MODEL_FINAL, _model_metadata(cell, result.steps), step=result.steps)
    record(run, ev, metrics=metrics, step=result.steps, protocol=proto, model_id=model_id)
    if model.family == "vae":
        x = dataset.test_images[:32].to(ctx.device).float() / 255.0
        recon = model.reconstruct(x).cpu()
        pairs = torch.stack([dataset.test_images[:32], recon], dim=1).flatten(0, 1)  # original, reconstruction, ...
        run.log_image(grid(pairs), schema.RECONSTRUCTIONS)
    final = checkpoints.final_state(
        model, cell_dict, result.steps, dataset.image_shape, dataset.observation, cell.model_source
    )
    checkpoints.log(run, final, "final.pt")
    if best_path.is_file():
        metrics.update(evaluate_best(model, best_path, final=ev, final_step=result.steps, cell=cell, ctx=ctx, run=run))
    metrics[schema.TRACKING_S] = run.seconds  # every MLflow call of the cell so far, artifacts included
    run.log_metrics({schema.TRACKING_S: metrics[schema.TRACKING_S]}, step=result.steps)
    return metrics


class TrialDiverged(RuntimeError):
    """A sweep trial whose final model has no finite validation FID: a failed trial, not a failed sweep."""


def _score_trial(job: CellJob, ctx: CellContext, model, result: TrainResult, checkpoint: Path) -> dict:
    """A sweep trial's result: its final model's FID against the validation split (schema.SWEEP_SCORE_RULE), a grid
    of its samples; no test-split evaluation (that is the retrained winners' business) and no model kept."""
    cell, run = job.cell, job.run
    selection = ctx.real[(cell.dataset, schema.SELECTION_ENCODER)]
    start = time.perf_counter()
    seed = cell.eval.seed + schema.SELECTION_SEED_OFFSET
    value = validation_fid(
        model, selection.encoder, selection.validation.features["features"], cell.train.eval_samples,
        cell.eval.batch_size, seed,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if not math.isfinite(value):
        raise TrialDiverged(f"the trained model's validation FID is {value}: the trial diverged")
    metrics = {
        schema.SWEEP_SCORE: value,
        schema.TRAIN_S: result.seconds,
        schema.EVAL_S: seconds,
        schema.TRAIN_IMAGES_PER_S: result.images_per_s,
    }
    run.log_metrics(metrics, step=result.steps)
    run.log_image(grid(generate(model, 64, 64, seed)), schema.SAMPLES_FINAL)
    ctx.echo(f"    validation FID {value:.4g} ({seconds:.1f} s)")
    return metrics


def _train(job: CellJob, ctx: CellContext, model, checkpoint: Path, best_path: Path, cell_dict: dict) -> TrainResult:
    """The training loop for the cell, with the periodic FID that selects its best checkpoint
    (schema.SELECTION_RULE: the selection encoder's validation features, latents of its own seed)."""
    cell, run = job.cell, job.run
    selector = None
    if cell.train.eval_every:
        selection = ctx.real[(cell.dataset, schema.SELECTION_ENCODER)]
        seed = cell.eval.seed + schema.SELECTION_SEED_OFFSET
        selector = PeriodicFID(
            selection.encoder,
            selection.validation.features,
            cell.train.eval_samples,
            cell.eval.batch_size,
            seed,
            best_path,
        )
    images = ctx.datasets[cell.dataset].train_images.to(ctx.device)  # whole split on the device; batches: index draws
    result = train(
        model,
        images,
        cell.train,
        seed=cell.seed,
        logger=CellLogger(run, share=tracking.is_remote(ctx.uri)),
        checkpoint=checkpoint,
        config=cell_dict,
        progress=ctx.progress,
        evaluator=selector,
        run_id=run.run_id,
        fence=job.lease.check if job.lease is not None else None,
    )
    if result.resumed_from:
        run.set_tags({schema.RESUMED_FROM: result.resumed_from})
        ctx.echo(f"    resumed from its checkpoint at step {result.resumed_from} (an interrupted earlier attempt)")
    return result


def evaluate_best(
    model, best_path: Path, *, final: Evaluation, final_step: int, cell: Cell, ctx: CellContext, run: tracking.Run
) -> dict:
    """Evaluation of the checkpoint with the lowest periodic FID, logged as best/<metric> with best/step: its sample
    metrics, and its likelihoods only when eval.best_metrics = "all" (IWAE and AIS again cost more than the rest of
    an evaluation). When the best is the final step, the final evaluation is reused rather than repeated."""
    state = checkpoints.read(best_path)
    likelihood = cell.eval.best_metrics == "all"
    best_model = model
    if state["step"] == final_step:
        ev = final
    else:
        ctx.echo(f"    evaluating the best checkpoint (step {state['step']}, periodic FID {state['fid']:.4g}) ...")
        best_model = copy.deepcopy(model)
        best_model.load_state_dict(state["model"])
        real = ctx.scoring(cell.dataset, cell.eval)
        ev = evaluate(best_model, ctx.datasets[cell.dataset], cell.eval, real, ctx.echo, likelihood=likelihood)
    kept = {k: v for k, v in ev.metrics.items() if likelihood or k not in schema.LIKELIHOOD_METRICS}
    metrics = {f"{schema.BEST_PREFIX}{k}": v for k, v in kept.items()}
    metrics.update(
        {
            schema.BEST_STEP: state["step"],
            schema.BEST_PERIODIC_FID: state["fid"],
            schema.EVAL_BEST_S: 0.0 if ev is final else ev.seconds,
        }
    )
    model_id = run.log_model(best_model, schema.MODEL_BEST, _model_metadata(cell, state["step"]), step=final_step)
    run.log_metrics(metrics, step=final_step, model_id=model_id)
    run.log_image(grid(ev.samples[:64]), schema.SAMPLES_BEST)
    run.log_file(best_path, schema.CHECKPOINTS_DIR)
    return metrics


def _model_metadata(cell: Cell, step: int) -> dict[str, str]:
    return {
        schema.MODEL: cell.model,
        schema.DATASET: cell.dataset,
        schema.SEED: str(cell.seed),
        "step": str(step),
        "source": cell.model_source or "genbench baselines",
    }


@dataclass
class CellLogger:
    """The training loop's logger: step metrics and periodic sample grids into the cell's run; with `share`, each
    resumable checkpoint into the tracking store too, where a cell moved to another node resumes from it."""

    run: tracking.Run
    share: bool = False

    def on_checkpoint(self, path: Path, step: int = -1) -> None:
        if self.share:
            self.run.log_resume_checkpoint(path, step)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.run.log_metrics(metrics, step)

    def log_samples(self, images: torch.Tensor, step: int) -> None:
        self.run.log_image_step(grid(images), schema.SAMPLES_BY_STEP, step)  # MLflow's image view: a step slider

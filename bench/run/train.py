"""The one training loop: random index batches from a device-resident dataset, periodic logs, sample grids and
resumable checkpoints. The model owns its math (`train_step`); this loop owns the schedule."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from baselines.contract import GenerativeModel
from bench.config import TrainConfig
from bench.devices import training_precision
from bench.run import checkpoints
from bench.run.interrupts import StopRequest
from bench.schema import PERIODIC_TRAIN_S, TRAIN_PREFIX

GRID_SIZE = 64  # images in each periodic sample grid (8 × 8)


class TrainingClock:
    """This process's training wall time: the time since the loop started, less the periodic evaluations."""

    def __init__(self):
        self.start, self.excluded = time.perf_counter(), 0.0

    def trained(self) -> float:
        return time.perf_counter() - self.start - self.excluded

    @contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.excluded += time.perf_counter() - t


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss."""


class TrainLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...
    def log_samples(self, images: torch.Tensor, step: int) -> None: ...


class PeriodicEvaluator(Protocol):
    """Called every cfg.eval_every steps and at the last step; returns metrics to log at that step. It must leave
    the model's parameters, mode and every RNG as it found them (training is identical with or without it)."""

    def __call__(self, model, step: int) -> dict[str, float]: ...


@dataclass
class TrainResult:
    steps: int
    seconds: float  # wall time of this process's training (excludes time before a resume)
    images_per_s: float
    last: dict[str, float]  # the last logged training metrics
    resumed_from: int  # 0 unless resumed from a checkpoint
    steady_images_per_s: float | None = None  # with a CUDA graph: images/s after its warm-up and capture


def train(
    model: GenerativeModel,
    images: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    logger: TrainLogger,
    checkpoint: Path | None = None,
    config: dict | None = None,
    progress: bool = True,
    evaluator: PeriodicEvaluator | None = None,
    run_id: str | None = None,
    fence: Callable[[], None] | None = None,
) -> TrainResult:
    """Train `model` for cfg.steps on uint8 `images` (N, C, H, W), already on the model's device.

    If `checkpoint` exists, training resumes from it (model, optimisers, step and RNG state); checkpoints are
    written there every cfg.checkpoint_every steps and at the end. `evaluator` runs every cfg.eval_every steps and
    at the end; its time is excluded from the training time and throughput, and `periodic/train_s` (training
    seconds so far in this process) is logged with it for curves over wall-clock.

    The loop never waits for the device between steps: a step's losses stay on the device (`LossLog`) and are read
    back once per log interval (and before a sample grid, an evaluation or a checkpoint), where a non-finite loss
    raises DivergenceError naming its step. With cfg.cuda_graph on a CUDA device, the whole step (batch gather,
    forward, backward, optimiser updates) is captured once as a CUDA graph and replayed (`GraphStep`).

    `fence` (the cell's lease check) runs before every step and every checkpoint; it raises when this process no
    longer holds the cell, and training stops there without writing anything more.
    """
    device = images.device
    optimizers = _prepare(model, cfg)
    batch_rng = torch.Generator().manual_seed(seed)  # batch indices are drawn on the CPU: same batches on any device
    torch.manual_seed(seed)  # the models' own noise (latents, reparameterisation, dropout); a resume restores it
    step, before = 0, 0.0  # before: training seconds of earlier processes (resumes)
    if checkpoint is not None and checkpoint.is_file():
        step, before = checkpoints.restore(checkpoint, model, optimizers, batch_rng, device)
    resumed_from = step

    model.train()
    # GANs with several discriminator updates per generator update (wgan-gp, sngan) take that many real batches
    # per step: a step is one generator update, as their papers count iterations.
    reals_per_step = cfg.batch_size * model.batches_per_step
    graph = GraphStep(model, images, optimizers, cfg, reals_per_step) if use_cuda_graph(cfg, device) else None
    if graph is None:
        for opt in optimizers.values():  # e.g. a checkpoint of a CUDA-graph run, resumed on the CPU
            make_capturable(opt, False)
    losses = LossLog(resumed_from)
    last: dict[str, float] = {}
    steady: tuple[int, float] | None = None  # (step, training seconds) once a CUDA graph replays
    clock = TrainingClock()
    off = None if progress else True  # None: off when not a TTY
    bar = tqdm(total=cfg.steps, initial=step, disable=off, unit="step", dynamic_ncols=True, leave=False)
    with StopRequest() as stop:
        while step < cfg.steps:
            if fence is not None:
                fence()  # raises when this process no longer holds the cell: nothing more is written
            idx = torch.randint(len(images), (reals_per_step,), generator=batch_rng)
            if graph is not None:
                logs = graph(idx)
                if graph.captured_at == graph.calls:  # the first replay is queued: from here on, the steady state
                    synchronize(device)
                    steady = (step + 1, clock.trained())
            else:
                x = batch(images, _to_device(idx, device), cfg.channels_last)
                with training_precision(cfg, device):
                    logs = model.train_step(x, optimizers)
            step += 1
            bar.update(1)
            losses.append(logs)
            final = step == cfg.steps
            if step % cfg.log_every == 0 or final:
                last = losses.flush()
                logger.log_metrics({f"{TRAIN_PREFIX}{k}": v for k, v in last.items()}, step)
                bar.set_postfix({k: f"{v:.3g}" for k, v in last.items()}, refresh=False)
            if step % cfg.sample_every == 0 or final:
                losses.check()
                logger.log_samples(sample_grid(model, seed), step)
            if evaluator is not None and cfg.eval_every and (step % cfg.eval_every == 0 or final):
                losses.check()
                trained = clock.trained()
                with clock.paused():
                    logs = evaluator(model, step)
                logger.log_metrics({**logs, PERIODIC_TRAIN_S: before + trained}, step)
            if checkpoint is not None and (step % cfg.checkpoint_every == 0 or final):
                losses.check()  # never checkpoint a diverged model
                if fence is not None:
                    fence()  # nor one of a cell another process holds now
                trained = before + clock.trained()
                checkpoints.save(checkpoint, model, optimizers, step, batch_rng, config or {}, trained, run_id)
                if hasattr(logger, "on_checkpoint"):  # e.g. shared with other nodes through the tracking store
                    with clock.paused():
                        logger.on_checkpoint(checkpoint, step)
            if stop.requested is not None:
                losses.check()
                if checkpoint is not None:
                    if fence is not None:
                        fence()  # a cell another process holds now: its checkpoint is not this process's to write
                    trained = before + clock.trained()
                    checkpoints.save(checkpoint, model, optimizers, step, batch_rng, config or {}, trained, run_id)
                    if hasattr(logger, "on_checkpoint"):  # a SIGTERM (a preempted node) shares where it stopped
                        logger.on_checkpoint(checkpoint, step)
                bar.close()
                raise KeyboardInterrupt(f"stopped by signal {stop.requested} at step {step}; checkpoint saved")
    losses.check()
    synchronize(device)  # the clock covers the device's work, not only its queueing
    bar.close()
    seconds = clock.trained()
    images_per_s = (step - resumed_from) * reals_per_step / seconds if seconds > 0 else 0.0
    steady_ips = None
    if steady is not None and step > steady[0]:
        steady_ips = (step - steady[0]) * reals_per_step / (seconds - steady[1])
    return TrainResult(step, seconds, images_per_s, last, resumed_from, steady_ips)


def _prepare(model, cfg: TrainConfig) -> dict:
    """The model in the memory format and compiled form the config asks for; its optimisers."""
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        for module in model.children():  # the networks (generator, discriminator, encoder, decoder)
            module.compile()
    return model.optimizers()


def batch(images: torch.Tensor, idx: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """The images at `idx` as float (B, C, H, W) in [0, 1], on the images' device."""
    x = images[idx].float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _to_device(idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU index tensor on `device` without stalling the host: a plain `.to(cuda)` of pageable memory waits for
    the copy, and with it for every step queued before; from pinned memory the copy is queued like a kernel."""
    if device.type != "cuda":
        return idx.to(device)
    return idx.pin_memory().to(device, non_blocking=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LossLog:
    """The training losses of the steps since the last read, kept on the device (one small stack per step) and read
    back in one transfer: the loop never waits for the device between steps. `check` raises DivergenceError at the
    first step with a non-finite loss; `flush` also returns the means since the last flush."""

    def __init__(self, step: int = 0):
        self.step = step  # the step of the last appended row
        self.names: list[str] | None = None
        self.pending: list[torch.Tensor] = []  # rows not yet read back, on the device
        self.read: list[torch.Tensor] = []  # (steps, losses) blocks read back and checked, on the CPU

    def append(self, logs: dict) -> None:
        if self.names is None:
            self.names = list(logs)
        device = next((v.device for v in logs.values() if torch.is_tensor(v)), torch.device("cpu"))
        values = [
            v.detach().float().reshape(()) if torch.is_tensor(v) else torch.tensor(float(v)) for v in logs.values()
        ]
        self.pending.append(torch.stack([v.to(device) for v in values]))
        self.step += 1

    def check(self) -> None:
        if not self.pending:
            return
        block = torch.stack(self.pending).cpu()  # the one transfer (and wait) for these steps
        self.pending = []
        self.read.append(block)
        bad = (~torch.isfinite(block)).any(dim=1).nonzero()
        if len(bad):
            first = self.step - len(block) + int(bad[0]) + 1
            values = dict(zip(self.names or [], block[int(bad[0])].tolist(), strict=False))
            raise DivergenceError(f"training diverged at step {first}: non-finite loss {values}")

    def flush(self) -> dict[str, float]:
        self.check()
        if not self.read:
            return {}
        matrix, self.read = torch.cat(self.read), []
        return dict(zip(self.names or [], matrix.double().mean(dim=0).tolist(), strict=False))


def use_cuda_graph(cfg: TrainConfig, device: torch.device) -> bool:
    """CUDA graphs where asked for and possible: a CUDA device; ignored on the CPU, where there is nothing to
    replay (the cell's key still records the setting)."""
    return cfg.cuda_graph and device.type == "cuda"


class GraphStep:
    """One training step (batch gather, forward, backward and every optimiser update) captured as a CUDA graph and
    replayed, so a step costs one launch instead of hundreds: small GANs and VAEs at batch 64 are bound by kernel
    launches on a data-centre GPU, not by arithmetic.

    The trajectory is the eager one: the first `WARMUP` steps run eagerly (on a side stream, as capture requires;
    they also create the optimisers' state), the next is captured, and every later step replays it. The batch
    indices are still drawn on the CPU by the loop's generator and copied into the graph's index buffer; the models'
    own noise comes from the default CUDA generator, which graphs advance as eager code does. Adam runs with
    `capturable=True` (its step counts on the device). A step that cannot be captured (a model that reads a value
    back to the host, say) falls back to eager steps with a warning, never to a wrong result."""

    WARMUP = 3

    def __init__(self, model, images: torch.Tensor, optimizers: dict, cfg: TrainConfig, reals_per_step: int):
        self.model, self.images, self.optimizers, self.cfg = model, images, optimizers, cfg
        self.device = images.device
        self.idx = torch.zeros(reals_per_step, dtype=torch.long, device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs: dict[str, torch.Tensor] = {}
        self.eager = False  # capture failed: plain eager steps from then on
        self.calls = 0
        self.captured_at = 0  # the call that captured (and first replayed) the graph; 0 = not yet
        for opt in optimizers.values():
            make_capturable(opt)

    def _step(self) -> dict[str, torch.Tensor]:
        x = batch(self.images, self.idx, self.cfg.channels_last)
        with training_precision(self.cfg, self.device, cache=False):  # autocast's weight cache cannot live in a graph
            return self.model.train_step(x, self.optimizers)

    def __call__(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        self.idx.copy_(idx.pin_memory(), non_blocking=True)
        self.calls += 1
        if self.eager:
            return self._step()
        if self.graph is not None:
            self.graph.replay()
            return {k: v.clone() for k, v in self.outputs.items()}  # the next replay overwrites the outputs
        if self.calls <= self.WARMUP:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                logs = self._step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            return logs
        return self._capture()

    def _capture(self) -> dict[str, torch.Tensor]:
        torch.cuda.synchronize(self.device)
        graph = torch.cuda.CUDAGraph()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph):
                outputs = self._step()
        except Exception as e:  # e.g. a host read-back (.item()) inside the step: not capturable
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            warnings.warn(
                f"train.cuda_graph: the training step of {type(self.model).__name__} could not be captured as a "
                f"CUDA graph ({type(e).__name__}: {str(e).splitlines()[0][:200]}); training eagerly instead",
                stacklevel=2,
            )
            self.eager = True
            torch.cuda.synchronize(self.device)
            return self._step()
        self.graph, self.outputs = graph, {k: v.detach() for k, v in outputs.items()}
        self.captured_at = self.calls
        graph.replay()  # capture records the step without running it
        return {k: v.clone() for k, v in self.outputs.items()}


def make_capturable(opt: torch.optim.Optimizer, on: bool = True) -> None:
    """An optimiser whose step can live in a CUDA graph (`on`): `capturable=True` (Adam, AdamW, ... keep their step
    counts on the device), with any step counts already loaded from a checkpoint moved there; or back (`on=False`:
    step counts on the CPU), for a checkpoint of a CUDA-graph run that resumes without one."""
    if "capturable" not in opt.defaults:
        if on:
            raise ValueError(
                f"train.cuda_graph: {type(opt).__name__} has no capturable mode; set train.cuda_graph = false"
            )
        return
    for group in opt.param_groups:
        if not on and not group.get("capturable"):
            continue
        group["capturable"] = on
        for p in group["params"]:
            state = opt.state.get(p, {})
            step = state.get("step")
            target = p.device if on else torch.device("cpu")
            if torch.is_tensor(step) and step.device != target:
                state["step"] = step.to(target, torch.float32)


def sample_grid(model, seed: int, n: int = GRID_SIZE) -> torch.Tensor:
    """The same latent draws at every call (fixed seed), so grids over training are comparable."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    images = model.sample(n, generator=torch.Generator(device=device).manual_seed(seed + 10_000))
    model.train(was_training)
    return images.cpu()

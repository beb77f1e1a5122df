"""The one training loop: random index batches from a device-resident dataset, periodic logs, sample grids and
resumable checkpoints. The model owns its math (`train_step`); this loop owns the schedule."""

from __future__ import annotations

import math
import signal
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from tqdm import tqdm

from bench.config import TrainConfig

GRID_SIZE = 64  # images in each periodic sample grid (8 × 8)


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss."""


class StopRequest:
    """SIGINT/SIGTERM during training only set a flag; the loop finishes its step, writes a checkpoint and then
    raises KeyboardInterrupt, so an interrupted cell resumes exactly where it stopped. Installed only in the main
    thread (where Python delivers signals); the previous handlers come back on exit.

    Once a process has been asked to stop (`stopping`, for the whole process), another SIGTERM is the same request
    (the suite's process forwards one to its cell's worker, which a Ctrl-C may have reached already); only another
    SIGINT, a second Ctrl-C, stops at once without the checkpoint."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    stopping = False

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested is not None or StopRequest.stopping:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now, without the checkpoint
                raise KeyboardInterrupt
            return
        self.requested = signum
        StopRequest.stopping = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


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


def save_checkpoint(
    path: Path,
    model,
    optimizers: dict,
    step: int,
    batch_rng: torch.Generator,
    config: dict,
    train_seconds: float = 0.0,
) -> None:
    """A plain dict {model, optimizers, config, step, rng, train_seconds}, written atomically."""
    state = {
        "train_seconds": train_seconds,  # training wall time up to this step, over every resume
        "model": model.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "config": config,
        "step": step,
        "rng": {
            "torch": torch.get_rng_state(),
            "batches": batch_rng.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    torch.save(state, tmp)
    tmp.replace(path)


def train(
    model,
    images: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    logger: TrainLogger,
    checkpoint: Path | None = None,
    config: dict | None = None,
    progress: bool = True,
    evaluator: PeriodicEvaluator | None = None,
) -> TrainResult:
    """Train `model` for cfg.steps on uint8 `images` (N, C, H, W), already on the model's device.

    If `checkpoint` exists, training resumes from it (model, optimisers, step and RNG state); checkpoints are
    written there every cfg.checkpoint_every steps and at the end. `evaluator` runs every cfg.eval_every steps and
    at the end; its time is excluded from the training time and throughput, and `periodic/train_s` (training
    seconds so far in this process) is logged with it for curves over wall-clock.
    """
    device = images.device
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.compile:
        for module in model.children():  # the networks (generator, discriminator, encoder, decoder)
            module.compile()
    optimizers = model.optimizers()
    batch_rng = torch.Generator().manual_seed(seed)  # batch indices are drawn on the CPU: same batches on any device
    torch.manual_seed(seed)  # the models' own noise (latents, reparameterisation, dropout); a resume restores it
    step, before = 0, 0.0  # before: training seconds of earlier processes (resumes)
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        step, before = state["step"], state.get("train_seconds", 0.0)
        torch.set_rng_state(state["rng"]["torch"])
        batch_rng.set_state(state["rng"]["batches"])
        if state["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    resumed_from = step

    model.train()
    running: dict[str, float] = defaultdict(float)
    count, last = 0, {}
    start = time.perf_counter()
    eval_seconds = 0.0
    bar = tqdm(
        total=cfg.steps,
        initial=step,
        disable=None if progress else True,  # None: off when not a TTY
        unit="step",
        dynamic_ncols=True,
        leave=False,
    )
    # GANs with several discriminator updates per generator update (wgan-gp, sngan) take that many real batches
    # per step: a step is one generator update, as their papers count iterations.
    reals_per_step = cfg.batch_size * getattr(model, "batches_per_step", 1)
    with StopRequest() as stop:
        while step < cfg.steps:
            idx = torch.randint(len(images), (reals_per_step,), generator=batch_rng).to(device)
            x = images[idx].float().div_(255.0)  # (B, C, H, W) in [0, 1]
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _precision(cfg, device):
                logs = model.train_step(x, optimizers)
            step += 1
            bar.update(1)
            if not all(math.isfinite(v) for v in logs.values()):
                raise DivergenceError(f"training diverged at step {step}: non-finite loss {logs}")
            for k, v in logs.items():
                running[k] += v
            count += 1
            final = step == cfg.steps
            if step % cfg.log_every == 0 or final:
                last = {k: v / count for k, v in running.items()}
                logger.log_metrics({f"train/{k}": v for k, v in last.items()}, step)
                bar.set_postfix({k: f"{v:.3g}" for k, v in last.items()}, refresh=False)
                running.clear()
                count = 0
            if step % cfg.sample_every == 0 or final:
                logger.log_samples(sample_grid(model, seed), step)
            if evaluator is not None and cfg.eval_every and (step % cfg.eval_every == 0 or final):
                t = time.perf_counter()
                trained = t - start - eval_seconds
                logs = evaluator(model, step)
                eval_seconds += time.perf_counter() - t
                logger.log_metrics({**logs, "periodic/train_s": before + trained}, step)
            if checkpoint is not None and (step % cfg.checkpoint_every == 0 or final):
                trained = time.perf_counter() - start - eval_seconds
                save_checkpoint(checkpoint, model, optimizers, step, batch_rng, config or {}, before + trained)
            if stop.requested is not None:
                if checkpoint is not None:
                    trained = time.perf_counter() - start - eval_seconds
                    save_checkpoint(checkpoint, model, optimizers, step, batch_rng, config or {}, before + trained)
                bar.close()
                raise KeyboardInterrupt(f"stopped by signal {stop.requested} at step {step}; checkpoint saved")
    bar.close()
    seconds = time.perf_counter() - start - eval_seconds
    done = step - resumed_from
    images_per_s = done * reals_per_step / seconds if seconds > 0 else 0.0
    return TrainResult(step, seconds, images_per_s, last, resumed_from)


@contextmanager
def _precision(cfg: TrainConfig, device: torch.device):
    """bf16 autocast when asked, and the TF32 switches as the config says (restored after the step)."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
    try:
        if cfg.precision == "bf16":
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _interrupt(signum, frame) -> None:
    """Outside training: the first SIGINT or SIGTERM raises KeyboardInterrupt; a SIGTERM after that is the same
    request (StopRequest.stopping), another SIGINT interrupts again."""
    if StopRequest.stopping and signum == signal.SIGTERM:
        return
    StopRequest.stopping = True
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


@contextmanager
def interrupt_on(*signals: signal.Signals):
    """These signals raise KeyboardInterrupt, as Ctrl-C does, with a repeated SIGTERM taken as the same request;
    inside training, StopRequest takes over. Signals reach the main thread only: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        StopRequest.stopping = False  # a later run in this process starts afresh


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 runs in hardware on `device`: a CUDA GPU that supports it, or a CPU with AVX512-BF16 or AMX.
    Elsewhere (an AVX2-only CPU, say) PyTorch emulates bf16, which trains several times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def bf16_note(device: torch.device) -> str | None:
    """A note for a user who asked for bf16 where it is emulated; None where bf16 runs in hardware."""
    if native_bf16(device):
        return None
    found = torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else device.type
    return (
        f"note: train.precision = bf16, but this {device.type.upper()} ({found}) has no bf16 arithmetic "
        "(AVX512-BF16 or AMX on a CPU): PyTorch emulates it, and training runs several times slower than fp32"
    )


def sample_grid(model, seed: int, n: int = GRID_SIZE) -> torch.Tensor:
    """The same latent draws at every call (fixed seed), so grids over training are comparable."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    images = model.sample(n, generator=torch.Generator(device=device).manual_seed(seed + 10_000))
    model.train(was_training)
    return images.cpu()

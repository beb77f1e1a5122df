"""A cell's checkpoints: the resumable `last.pt` (weights, optimisers, every RNG, the step, the MLflow run), the best
and final weights its run keeps, and the one way genbench reads any of them back: `read`, with
`torch.load(weights_only=True)`. A checkpoint is plain tensors, numbers, strings and dicts, so nothing in one (a
file from the tracking store, a shared disk or another node) can run code when it is loaded; a file that would is
refused with a one-line error naming it. A model is rebuilt from the registry (`rebuild`): the class comes from
installed code, only the weights from the file."""

from __future__ import annotations

import pickle
import re
import tempfile
from pathlib import Path

import torch

import baselines
from bench import schema
from bench.storage import atomic_save


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: not weights-only (it would run code when unpickled), truncated, or not one
    of genbench's."""


def read(path: Path | str, name: str | None = None) -> dict:
    """The checkpoint at `path` as a plain dict, on the CPU, loaded weights-only. CheckpointError (one line, naming
    the file, or `name` where the file came from: a run's artifact) for a file that would run code when unpickled,
    or that is not a readable checkpoint."""
    name = name or str(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"it imports {found.group(1)}" if found else "it holds more than tensors, numbers and strings"
        raise CheckpointError(
            f"{name}: refused: loading it would run code ({what}); genbench's checkpoints hold only tensors, "
            "numbers and strings, so this file was not written by genbench: delete it"
        ) from None
    except Exception as e:  # truncated, empty, not a torch file
        raise CheckpointError(f"{name}: not a readable checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{name}: not a genbench checkpoint (no model weights in it)")
    return state


def checkpoint_path(results: Path, key: str) -> Path:
    """Where the resumable checkpoint of the cell `key` lives under `results`."""
    return results / "checkpoints" / key / "last.pt"


def save(
    path: Path,
    model,
    optimizers: dict,
    step: int,
    batch_rng: torch.Generator,
    config: dict,
    train_seconds: float = 0.0,
    run_id: str | None = None,
) -> None:
    """A plain dict {model, optimizers, config, step, rng, train_seconds, run_id}, written atomically. `run_id` is
    the MLflow run the cell logs into: a resume continues that run."""
    device = next(model.parameters()).device
    state = {
        "run_id": run_id,
        "train_seconds": train_seconds,  # training wall time up to this step, over every resume
        "model": model.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "config": config,
        "step": step,
        "rng": {
            "torch": torch.get_rng_state(),
            "batches": batch_rng.get_state(),
            # the training device's CUDA generator only: a checkpoint resumes on a machine with other GPUs, or none
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        },
    }
    atomic_save(state, path)


def restore(path: Path, model, optimizers: dict, batch_rng: torch.Generator, device: torch.device):
    """Resume from a `save` file: weights, optimiser state and every RNG as they were at its step. Returns (step,
    training seconds before it)."""
    # on the CPU: the RNG states must stay CPU ByteTensors (map_location=cuda would move them and break
    # set_rng_state); load_state_dict copies the weights and optimiser moments onto the model's device
    state = read(path)
    model.load_state_dict(state["model"])
    for name, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][name])
    torch.set_rng_state(state["rng"]["torch"])
    batch_rng.set_state(state["rng"]["batches"])
    cuda_rng = state["rng"].get("cuda")
    if device.type == "cuda" and torch.is_tensor(cuda_rng):  # none from a CPU run: keep the fresh seed's
        torch.cuda.set_rng_state(cuda_rng, device)
    return state["step"], state.get("train_seconds", 0.0)


def interrupted_attempt(results: Path, key: str) -> dict | None:
    """The step and MLflow run id an interrupted attempt of this cell saved in its checkpoint; None without one (or
    with an unreadable one, which `set_aside_if_unusable` has moved aside before: the cell gets a new run)."""
    path = checkpoint_path(results, key)
    if not path.is_file():
        return None
    try:
        state = read(path)
    except CheckpointError:
        return None
    return {"step": state["step"], "run_id": state.get("run_id")}


def step_of(path: Path) -> int:
    """The step of the checkpoint at `path`; -1 when there is none, or none that reads."""
    try:
        return int(read(path)["step"]) if Path(path).is_file() else -1
    except (CheckpointError, KeyError, TypeError, ValueError):
        return -1


def set_aside_if_unusable(path: Path, name: str) -> str | None:
    """None when the checkpoint at `path` reads (weights-only); otherwise why not, with the file moved aside to
    `last.pt.refused` (kept for a look, never read again), so the cell starts from step 0 instead of failing on it
    at every run."""
    try:
        read(path, name)
    except CheckpointError as e:
        path.replace(path.with_name(path.name + ".refused"))
        return str(e)
    return None


def remove(checkpoint: Path) -> None:
    """The cell's local checkpoints (last.pt, best.pt) and their folder, once its run holds the final and best."""
    checkpoint.unlink(missing_ok=True)
    checkpoint.with_name("best.pt").unlink(missing_ok=True)
    if checkpoint.parent.is_dir() and not any(checkpoint.parent.iterdir()):
        checkpoint.parent.rmdir()


def final_state(model, cell_dict: dict, step: int, image_shape, observation: str, source: str) -> dict:
    """What a finished run keeps as checkpoints/final.pt: the weights and everything `rebuild` needs besides the
    registry (the cell's configuration, the image shape and observation model of its dataset, a plugin's class)."""
    return {
        "model": model.state_dict(),
        "config": cell_dict,
        "step": step,
        "image_shape": list(image_shape),
        "observation": observation,
        "source": source,
    }


def log(run, state: dict, name: str) -> None:
    """`state` as checkpoints/`name` in the cell's run."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        torch.save(state, path)
        run.log_file(path, schema.CHECKPOINTS_DIR)


def rebuild(final: dict, weights: dict | None = None, device: str | torch.device = "cpu"):
    """The model a finished run's final.pt describes (`final_state`), built from the registry and loaded with
    `weights` (a state dict: the best checkpoint's) or final.pt's own, in eval mode on `device`."""
    from bench.data import load as load_dataset
    from bench.typed_toml import build

    config = final.get("config") or {}
    name, dataset = config.get("cell", {}).get("model"), config.get("cell", {}).get("dataset")
    if not name or "model" not in config:
        raise CheckpointError("final.pt names no model: not a checkpoint of a genbench cell run")
    cls = baselines.get(name, final.get("source", ""))
    model_config = build(cls.Config, config["model"], "final.pt", f"models.{name}")
    shape, observation = final.get("image_shape"), final.get("observation")
    if shape is None:  # a run logged before its checkpoint carried the image shape: ask the dataset
        data = load_dataset(dataset)
        shape, observation = data.image_shape, data.observation
    model = baselines.build(name, model_config, tuple(shape), observation or "bernoulli", final.get("source", ""))
    model.load_state_dict(final["model"] if weights is None else weights)
    return model.to(device).eval()


def load_logged(uri: str, run_id: str, which: str = schema.MODEL_FINAL, device: str | torch.device = "cpu"):
    """The model a finished cell run logged as `which` (schema.MODEL_FINAL / MODEL_BEST), rebuilt from the registry
    and its weights-only checkpoints (checkpoints/final.pt, and best.pt for the best): what `bench sample` and
    `bench eval --run` draw from. The run's pickled MLflow model is never loaded."""
    from bench import tracking

    with tempfile.TemporaryDirectory() as tmp:
        where = f"run {run_id}'s {schema.CHECKPOINTS_DIR}/"
        path = tracking.download_checkpoint(uri, run_id, schema.MODEL_FINAL, Path(tmp))
        final = read(path, where + path.name)
        weights = None
        if which == schema.MODEL_BEST:
            path = tracking.download_checkpoint(uri, run_id, schema.MODEL_BEST, Path(tmp))
            weights = read(path, where + path.name)["model"]
    return rebuild(final, weights, device)

"""Samples made elsewhere, on the leaderboard: `bench eval` reads them, scores them under a suite's protocol and logs
them as a run of family `external`; `bench sample` draws samples from a model a cell logged to MLflow."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from bench import schema, tracking
from bench.config import BenchConfig
from bench.data import Dataset
from bench.eval.pipeline import evaluate_samples
from bench.run.cell import prepare_real
from bench.run.record import flatten, grid, open_run, record
from bench.storage import bytes_digest

IMAGE_SUFFIXES = (".png",)


class SampleError(ValueError):
    """The samples cannot be scored under the protocol; the message says what is wrong and what to do."""


def read_samples(path: Path) -> np.ndarray:
    """The array in a .npy or .npz file (key `samples`, or its only array), or the PNGs of a folder (sorted by
    name), as they are on disk."""
    path = Path(path)
    if not path.exists():
        raise SampleError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_png_folder(path)
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise SampleError(f"{path}: not a readable .npy array ({e})") from None
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                keys = list(archive.keys())
                if "samples" in keys:
                    return archive["samples"]
                if len(keys) == 1:
                    return archive[keys[0]]
        except (ValueError, OSError) as e:
            raise SampleError(f"{path}: not a readable .npz archive ({e})") from None
        raise SampleError(f"{path}: an .npz with several arrays {keys} and none named 'samples'; name it 'samples'")
    raise SampleError(f"{path}: give a .npy or .npz array of images, or a folder of .png files")


def _read_png_folder(folder: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    others = [p.name for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise SampleError(f"{folder}: not PNG images: {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}")
    if not files:
        raise SampleError(f"{folder}: no .png files")
    images = []
    for p in files:
        try:
            with Image.open(p) as im:
                images.append(_pixels(im))
        except (UnidentifiedImageError, OSError) as e:
            raise SampleError(f"{p}: not a readable PNG ({type(e).__name__})") from None
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise SampleError(f"{folder}: the PNGs differ in size/channels: {sorted(shapes)[:4]}")
    return np.stack(images)


def _pixels(im) -> np.ndarray:
    """A PNG's pixel values: a palette image ("P") as the colours its indices stand for (grey when the palette is
    grey), not the indices; an alpha channel dropped."""
    if im.mode == "P":
        im = im.convert("RGB")
        rgb = np.asarray(im)
        return rgb[..., 0] if (rgb == rgb[..., :1]).all() else rgb
    if im.mode in ("LA", "RGBA"):
        im = im.convert(im.mode[:-1] if im.mode == "LA" else "RGB")
    return np.asarray(im)


def as_images(array: np.ndarray, image_shape: tuple[int, int, int], what: str) -> torch.Tensor:
    """uint8 (N, C, H, W) from an (N, C, H, W), (N, H, W, C) or, for one channel, (N, H, W) array of uint8 values, or
    of floats in [0, 1] (rounded to 8 bits as a model's samples are)."""
    c, h, w = image_shape
    expected = f"(N, {c}, {h}, {w}) or (N, {h}, {w}, {c})" + (f" or (N, {h}, {w})" if c == 1 else "")
    shape = tuple(array.shape)
    if array.ndim == 3 and c == 1 and shape[1:] == (h, w):
        array = array[:, None]
    elif array.ndim == 4 and shape[1:] == (h, w, c) and shape[1:] != (c, h, w):
        array = array.transpose(0, 3, 1, 2)
    elif not (array.ndim == 4 and shape[1:] == (c, h, w)):
        raise SampleError(
            f"{what}: samples of shape {shape}, but the dataset's images are {c}x{h}x{w}: give {expected}"
        )
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array))
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise SampleError(f"{what}: float samples must lie in [0, 1] (or give uint8 0-255)")
        return torch.from_numpy(np.ascontiguousarray(np.round(array * 255.0)).astype(np.uint8))
    raise SampleError(f"{what}: samples of dtype {array.dtype}; give uint8 (0-255) or floats in [0, 1]")


def score_and_log(
    config: BenchConfig,
    suite_name: str,
    dataset: Dataset,
    samples_path: Path,
    name: str,
    uri: str,
    results: Path,
    device,
    echo=print,
) -> tuple[str, dict]:
    """Score the samples at `samples_path` under the suite's protocol for `dataset` and log them as an `external`
    run named `name`; returns (run id, metrics). A FINISHED run of the same samples under the same protocol is
    reused, not repeated."""
    suite = config.suite(suite_name)
    cfg = suite.eval
    samples = as_images(read_samples(samples_path), dataset.image_shape, str(samples_path))
    if len(samples) < cfg.num_samples:
        raise SampleError(
            f"{samples_path}: {len(samples)} samples, but suite {suite_name!r} scores N = {cfg.num_samples} per model "
            f"(eval.num_samples); give at least {cfg.num_samples} (the first {cfg.num_samples} are used)"
        )
    used = samples[: cfg.num_samples]
    if len(samples) > cfg.num_samples:
        echo(f"using the first {cfg.num_samples} of {len(samples)} samples (the suite's eval.num_samples)")
    tracking.check_reachable(uri)
    real = prepare_real(dataset, cfg.encoders, cfg, config.domain, results, device, scoring=cfg.encoders)
    bundles = tuple(real[(dataset.name, name)] for name in cfg.encoders)
    echo(f"scoring {len(used)} samples of {dataset.name} with the {', '.join(cfg.encoders)} encoder(s) ...")
    ev = evaluate_samples(used, dataset, cfg, bundles, device)
    digest = bytes_digest([used.numpy().tobytes()])
    key = bytes_digest([f"external|{name}|{digest}|{ev.fingerprint}"])[:16]
    tracker = tracking.Tracker(uri, suite.name, results / "artifacts")
    finished = tracker.finished_cells()
    if key in finished:
        echo(f"{name}: these samples are already scored under this protocol (run {finished[key]})")
        return finished[key], ev.metrics
    run = open_run(
        tracker, f"{name}/{dataset.name}", suite=suite.name, model=name, family="external", dataset=dataset, seed="-",
        key=key, variant=key,
    )  # fmt: skip
    run.log_params(
        {
            **flatten({"eval": dataclasses.asdict(cfg)}),
            "samples.path": str(Path(samples_path).resolve()),
            "samples.sha256": digest,
            "samples.count": str(len(samples)),
        }
    )
    reference = bundles[0].reference
    record(run, ev, metrics={schema.EVAL_S: ev.seconds, schema.EVAL_REFERENCE_S: reference.seconds})
    run.end("FINISHED")
    return run.run_id, ev.metrics


def draw(uri: str, run_id: str, n: int, seed: int, checkpoint: str, batch_size: int | None, device) -> torch.Tensor:
    """n uint8 samples from the model a cell run logged (`checkpoint`: final or best), drawn as the evaluation draws
    them: latents from `seed` in chunks of the run's eval.batch_size, so `--seed` = the run's eval.seed and `-n` =
    its eval.num_samples reproduce the evaluated samples exactly (on the same kind of device)."""
    from bench.eval.pipeline import generate

    model = tracking.load_model(uri, run_id, schema.MODEL_FINAL if checkpoint == "final" else schema.MODEL_BEST, device)
    if batch_size is None:
        batch_size = int(tracking.run_params(uri, run_id).get("eval.batch_size", 500))
    return generate(model, n, batch_size, seed)


def write_samples(samples: torch.Tensor, out: Path) -> str:
    """A PNG grid (8 per row), or the uint8 (N, C, H, W) array as .npz (key `samples`) or .npy."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        from PIL import Image

        Image.fromarray(grid(samples)).save(out)
        return f"a grid of {len(samples)} samples"
    if out.suffix == ".npz":
        np.savez(out, samples=samples.numpy())
    elif out.suffix == ".npy":
        np.save(out, samples.numpy())
    else:
        raise SampleError(f"{out}: write .png (a grid), .npz or .npy (the uint8 array)")
    return f"uint8 array {tuple(samples.shape)}"

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

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


class SampleError(ValueError):
    """The samples cannot be scored under the protocol; the message says what is wrong and what to do."""


def read_samples(path: Path) -> np.ndarray:
    """The array in a .npy or .npz file (key `samples`, or its only array), or the images of a folder (PNG or JPEG,
    sorted by name; or its class subfolders'), as they are on disk."""
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
    raise SampleError(f"{path}: give a .npy or .npz array of images, or a folder of .png / .jpg files")


def _read_png_folder(folder: Path) -> np.ndarray:
    """The images of a folder (PNG or JPEG, sorted by name), or of its class subfolders (each sorted by name, the
    subfolders in name order) when it holds only folders, as torchvision's ImageFolder lays them out."""
    from PIL import Image, UnidentifiedImageError

    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    if entries and all(p.is_dir() for p in entries):  # class subfolders
        files = [f for d in entries for f in sorted(p for p in d.iterdir() if not p.name.startswith("."))]
    else:
        files = entries
    others = [p.name for p in files if p.is_dir() or p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        raise SampleError(
            f"{folder}: not PNG or JPEG images: {', '.join(others[:5])}{' ...' if len(others) > 5 else ''} (give a "
            "folder of images, or a folder of class folders of images)"
        )
    if not files:
        raise SampleError(f"{folder}: no .png or .jpg files")
    images = []
    for p in files:
        try:
            with Image.open(p) as im:
                images.append(_pixels(im))
        except (UnidentifiedImageError, OSError) as e:
            raise SampleError(f"{p}: not a readable image ({type(e).__name__})") from None
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise SampleError(f"{folder}: the images differ in size/channels: {sorted(shapes)[:4]}")
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


def image_shape_of(array: np.ndarray, what: str) -> tuple[int, int, int]:
    """(C, H, W) of an image array without a dataset to say it: (N, H, W) is grey; (N, C, H, W) when its second axis
    is 1 or 3 channels, else (N, H, W, C) when its last one is."""
    if array.ndim == 3:
        return 1, array.shape[1], array.shape[2]
    if array.ndim == 4 and array.shape[1] in (1, 3):
        return array.shape[1], array.shape[2], array.shape[3]
    if array.ndim == 4 and array.shape[3] in (1, 3):
        return array.shape[3], array.shape[1], array.shape[2]
    raise SampleError(f"{what}: an array of shape {tuple(array.shape)} is not a batch of 1- or 3-channel images")


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
    from bench.run.checkpoints import load_logged

    model = load_logged(uri, run_id, schema.MODEL_FINAL if checkpoint == "final" else schema.MODEL_BEST, device)
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


@dataclasses.dataclass
class Score:
    """What `bench eval` prints (and `bench.evaluate` returns): the metrics and the protocol behind them."""

    metrics: dict[str, float]
    fingerprint: str  # the protocol's fingerprint: equal to a suite's when scored under the suite's protocol
    protocol: dict
    samples: int
    reference: str  # what the samples were compared with, in words

    def as_dict(self) -> dict:
        return {
            "metrics": self.metrics,
            "protocol": self.fingerprint,
            "samples": self.samples,
            "reference": self.reference,
        }


def _images(value, image_shape, what: str) -> torch.Tensor:
    """uint8 (N, C, H, W) from a path (file or folder), a numpy array or a tensor; the shape inferred when
    `image_shape` is None."""
    if isinstance(value, torch.Tensor):
        value = value.cpu().numpy()
    array = value if isinstance(value, np.ndarray) else read_samples(Path(value))
    return as_images(array, image_shape or image_shape_of(array, what), what)


def _dataset_split(reference) -> tuple[str, str] | None:
    """("mnist", "test") for the string "mnist:test" naming a known dataset; None for anything else."""
    from bench.data import DATASETS

    if isinstance(reference, str) and ":" in reference and not Path(reference).exists():
        name, split = reference.rsplit(":", 1)
        if name in DATASETS:
            return name, split
    return None


def score(
    config: BenchConfig,
    samples,
    *,
    suite_name: str | None = None,
    dataset_name: str | None = None,
    reference=None,
    encoders: tuple[str, ...] = (),
    results: Path = Path("results"),
    device=None,
    echo=print,
) -> Score:
    """Score samples without logging anything. Under a suite's protocol (`suite_name`, or the default evaluation
    settings) against a dataset's reference split, the numbers and fingerprint are those `bench eval --name` logs
    (the same code: real features, metrics, protocol). Against any other reference (a folder or array of images,
    or another `dataset:split`) the sample metrics are computed in the same encoders' features, with a fingerprint
    of their own (the reference's digest in it). The `domain` encoder needs the dataset it was trained for."""
    from bench.config import EvalConfig
    from bench.data import load
    from bench.eval.encoders import build_encoder
    from bench.eval.metrics import sample_metrics
    from bench.eval.protocol import library_versions
    from bench.storage import json_digest

    device = device or torch.device("cpu")
    suite = config.suite(suite_name) if suite_name else None
    cfg = suite.eval if suite else EvalConfig(validation_images=0)  # no suite, no selection: the whole train split
    if encoders:
        cfg = dataclasses.replace(cfg, encoder=encoders[0], extra_encoders=tuple(encoders[1:]))
    named = _dataset_split(reference)
    if reference is None and dataset_name is None:
        raise SampleError("give a reference (a folder of images, an array, or DATASET:SPLIT) or a dataset")
    dataset = load(dataset_name, validation=cfg.validation_images) if dataset_name else None
    if named and dataset is None:
        dataset = load(named[0], validation=cfg.validation_images)
    shape = dataset.image_shape if dataset else None
    images = _images(samples, shape, "samples")
    n = len(images)
    if suite is not None:
        if n < cfg.num_samples:
            raise SampleError(
                f"{n} samples, but suite {suite_name!r} scores N = {cfg.num_samples} per model (eval.num_samples); "
                f"give at least {cfg.num_samples} (the first {cfg.num_samples} are used), or leave out the suite"
            )
        images = images[: cfg.num_samples]
    protocol_mode = reference is None or (
        named is not None and named[0] == dataset.name and named[1] == cfg.reference_split
    )
    if protocol_mode:
        if suite is None:  # every sample, the default settings otherwise
            cfg = _fit(cfg, n, len(dataset.split(cfg.reference_split)[0]))
        real = prepare_real(dataset, cfg.encoders, cfg, config.domain, results, device, scoring=cfg.encoders,
                            echo=echo)  # fmt: skip
        bundles = tuple(real[(dataset.name, e)] for e in cfg.encoders)
        ev = evaluate_samples(images, dataset, cfg, bundles, device)
        where = f"{dataset.name}:{cfg.reference_split} ({len(bundles[0].reference.features['features'])} images)"
        return Score(ev.metrics, ev.fingerprint, ev.protocol, len(images), where)
    if named:
        ref_ds = dataset if named[0] == dataset.name else load(named[0], validation=cfg.validation_images)
        try:
            ref_images = ref_ds.split(named[1])[0]
        except ValueError as e:
            raise SampleError(f"reference {reference}: {e}") from None
        where = f"{reference} ({len(ref_images)} images)"
    else:
        ref_images = _images(reference, shape or tuple(images.shape[1:]), f"reference {reference}")
        where = f"{reference if not isinstance(reference, np.ndarray | torch.Tensor) else 'an array'} "
        where += f"({len(ref_images)} images)"
    if tuple(ref_images.shape[1:]) != tuple(images.shape[1:]):
        raise SampleError(
            f"the samples are {tuple(images.shape[1:])} images and the reference {tuple(ref_images.shape[1:])}: "
            "give images of one shape"
        )
    if "domain" in cfg.encoders and dataset is None:
        raise SampleError(
            "the domain encoder is trained on a dataset's labels: give the dataset the images imitate (--dataset), "
            "or another encoder (--encoder inception or dinov2)"
        )
    if suite is None:
        cfg = _fit(cfg, len(images), len(ref_images))
    metrics = {schema.GENERATED_IMAGES: float(len(images)), schema.REFERENCE_IMAGES: float(len(ref_images))}
    parts = []
    for i, name in enumerate(cfg.encoders):
        encoder = build_encoder(name, dataset, config.domain, results / "cache", device)
        out = sample_metrics(encoder(images, cfg.batch_size), encoder(ref_images, cfg.batch_size), cfg)
        metrics.update({schema.encoder_key(k, name if i else ""): v for k, v in out.items()})
        parts.append({"encoder": name, "weights_digest": encoder.weights_digest, "resize": encoder.resize,
                      "preprocessing": encoder.preprocessing})  # fmt: skip
    protocol = {
        "encoders": parts,
        "reference": {"what": where, "digest": bytes_digest([ref_images.numpy().tobytes()])},
        "eval": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "ais"},
        "versions": library_versions(),
    }
    return Score(metrics, json_digest(protocol, 12), protocol, len(images), where)


def _fit(cfg, samples: int, reference: int):
    """The default settings fitted to the images at hand: every sample scored, subsets no larger than either side."""
    return dataclasses.replace(
        cfg,
        num_samples=samples,
        kid_subset_size=min(cfg.kid_subset_size, samples, reference),
        isc_splits=min(cfg.isc_splits, samples),
    )

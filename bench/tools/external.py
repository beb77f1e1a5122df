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
from bench.storage import bytes_digest, cache_dir
from bench.tools.images import (
    RESIZER,
    FolderImages,
    SampleError,
    as_images,
    image_shape_of,
    load_images,
    read_samples,
)


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
) -> Logged:
    """Score the samples at `samples_path` under the suite's protocol for `dataset` and log them as an `external`
    run named `name`; returns the score and the run id. A FINISHED run of the same samples under the same protocol
    is reused, not repeated."""
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
    real = prepare_real(dataset, cfg.encoders, cfg, config.domain, cache_dir(), device, scoring=cfg.encoders)
    bundles = tuple(real[(dataset.name, name)] for name in cfg.encoders)
    echo(f"scoring {len(used)} samples of {dataset.name} with the {', '.join(cfg.encoders)} encoder(s) ...")
    ev = evaluate_samples(used, dataset, cfg, bundles, device)
    where = f"{dataset.name}:{cfg.reference_split} ({len(bundles[0].reference.features['features'])} images)"
    digest = bytes_digest([used.numpy().tobytes()])
    key = bytes_digest([f"external|{name}|{digest}|{ev.fingerprint}"])[:16]
    tracker = tracking.Tracker(uri, suite.name, results / "artifacts")
    finished = tracker.finished_cells()
    if key in finished:
        echo(f"{name}: these samples are already scored under this protocol (run {finished[key]})")
        return Logged(ev.metrics, ev.fingerprint, ev.protocol, len(used), where, cfg.encoders, finished[key])
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
    return Logged(ev.metrics, ev.fingerprint, ev.protocol, len(used), where, cfg.encoders, run.run_id)


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
    encoders: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """One JSON schema whatever the flags (`bench eval --json`; with --name, `run_id` is added)."""
        return {
            "encoder": self.encoders[0] if self.encoders else None,
            "encoders": list(self.encoders),
            "metrics": self.metrics,
            "protocol": self.fingerprint,
            "samples": self.samples,
            "reference": self.reference,
        }


@dataclasses.dataclass
class Logged(Score):
    """A score logged as a run (`bench eval --name`)."""

    run_id: str = ""


# torch-fidelity's names of registered inputs, for the datasets genbench has
TORCH_FIDELITY_INPUTS = {"cifar10-train": ("cifar10", "train"), "cifar10-val": ("cifar10", "test")}


def _images(value, image_shape, what: str):
    """uint8 (N, C, H, W) from a numpy array, a tensor or an array file, or a folder's images streamed
    (`FolderImages`, never read whole); the shape inferred when `image_shape` is None."""
    if isinstance(value, torch.Tensor):
        value = value.cpu().numpy()
    if not isinstance(value, np.ndarray):
        path = Path(value)
        if path.is_dir():
            folder = FolderImages.scan(path)
            if image_shape is not None and folder.shape != tuple(image_shape):
                c, h, w = image_shape
                raise SampleError(
                    f"{what}: {path} holds {'x'.join(map(str, folder.shape))} (CxHxW) images, but "
                    f"{c}x{h}x{w} are needed: give images of that size and channels"
                )
            return folder
        value = load_images(path).array
    return as_images(value, image_shape or image_shape_of(value, what), what)


def _shape(images) -> tuple[int, int, int]:
    return images.shape if isinstance(images, FolderImages) else tuple(images.shape[1:])


def _digest(images) -> str:
    """The sha256 of the uint8 pixels (a folder's set by its last encoder pass)."""
    return images.digest if isinstance(images, FolderImages) else bytes_digest([images.numpy().tobytes()])


def _tensor(images, n: int) -> torch.Tensor:
    """The first n images as one tensor (a suite's protocol scores its eval.num_samples through the suite's code)."""
    if isinstance(images, FolderImages):
        head = FolderImages(images.folder, images.files[:n], images.size, images.channels, images.resized)
        return torch.cat(list(head.batches(256)))
    return images[:n]


def _dataset_split(reference) -> tuple[str, str] | None:
    """("mnist", "test") for "mnist:test" naming a known dataset, ("cifar10", "train") for torch-fidelity's
    "cifar10-train"; None for anything else."""
    from bench.data import DATASETS

    if not isinstance(reference, str) or Path(reference).exists():
        return None
    if reference in TORCH_FIDELITY_INPUTS:
        return TORCH_FIDELITY_INPUTS[reference]
    if ":" in reference:
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
    metrics=None,
    batch_size: int | None = None,
    allow_small_n: bool = False,
    results: Path = Path("results"),
    device=None,
    echo=print,
) -> Score:
    """Score samples without logging anything.

    Under a suite's protocol (`suite_name`) against the dataset's reference split, the numbers, names and
    fingerprint are those `bench eval --name` logs (the same code: real features, metrics, protocol, every metric;
    `metrics` keeps those asked for). Otherwise the sample metrics asked for (`metrics`: METRICS names, default all)
    are computed in each encoder's features, named with the encoder (`fid_inception`, `kid_mean_dinov2`), against
    the reference (a folder or array of images, `dataset:split`, torch-fidelity's `cifar10-train`; default the
    dataset's reference split), with a fingerprint of their own (the reference's digest in it). Without a suite or
    dataset the encoder is Inception; the `domain` encoder needs the dataset it was trained for. FID needs more
    images a side than feature dimensions (`allow_small_n` computes it anyway and says so in the protocol); samples
    that are the reference images score FID 0 with a warning."""
    from bench.config import EvalConfig
    from bench.data import load
    from bench.eval.encoders import build_encoder
    from bench.eval.metrics import METRICS, metric_groups, sample_metrics
    from bench.eval.protocol import library_versions
    from bench.storage import json_digest

    which = metric_groups(metrics)  # an unknown name fails here, before any work
    device = device or torch.device("cpu")
    suite = config.suite(suite_name) if suite_name else None
    cfg = suite.eval if suite else EvalConfig(validation_images=0)  # no suite, no selection: the whole train split
    named = _dataset_split(reference)
    if reference is None and dataset_name is None:
        raise SampleError("give a reference (a folder of images, an array, or DATASET:SPLIT) or a dataset")
    if not encoders and suite is None and dataset_name is None and named is None:
        encoders = ("inception",)  # folder against folder: the field's default
    if encoders:
        cfg = dataclasses.replace(cfg, encoder=encoders[0], extra_encoders=tuple(encoders[1:]))
    if batch_size is not None:
        cfg = dataclasses.replace(cfg, batch_size=batch_size)
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
        images = _tensor(images, cfg.num_samples)
        if reference is None or (named is not None and named == (dataset.name, cfg.reference_split)):
            real = prepare_real(dataset, cfg.encoders, cfg, config.domain, cache_dir(), device, scoring=cfg.encoders,
                                echo=echo)  # fmt: skip
            bundles = tuple(real[(dataset.name, e)] for e in cfg.encoders)
            ev = evaluate_samples(images, dataset, cfg, bundles, device)
            where = f"{dataset.name}:{cfg.reference_split} ({len(bundles[0].reference.features['features'])} images)"
            kept = ev.metrics if which is None else _kept(ev.metrics, which, METRICS)
            return Score(kept, ev.fingerprint, ev.protocol, len(images), where, cfg.encoders)
    if named or reference is None:
        source, split = named or (dataset.name, cfg.reference_split)
        ref_ds = dataset if dataset is not None and source == dataset.name else load(source, validation=0)
        try:
            ref_images = ref_ds.split(split)[0]
        except ValueError as e:
            raise SampleError(f"reference {source}:{split}: {e}") from None
        where = f"{source}:{split} ({len(ref_images)} images)"
    else:
        ref_images = _images(reference, shape or _shape(images), f"reference {reference}")
        where = f"{reference if not isinstance(reference, np.ndarray | torch.Tensor) else 'an array'} "
        where += f"({len(ref_images)} images)"
    if _shape(ref_images) != _shape(images):
        raise SampleError(
            f"the samples are {_shape(images)} images and the reference {_shape(ref_images)}: give images of one shape"
        )
    if "domain" in cfg.encoders and dataset is None:
        raise SampleError(
            "the domain encoder is trained on a dataset's labels: give the dataset the images imitate (--dataset), "
            "or another encoder (--encoder inception or dinov2)"
        )
    if suite is None:
        cfg = _fit(cfg, len(images), len(ref_images))
    ref_digest, copies = None, False
    out = {schema.GENERATED_IMAGES: float(len(images)), schema.REFERENCE_IMAGES: float(len(ref_images))}
    parts = []
    for i, name in enumerate(cfg.encoders):
        encoder = build_encoder(name, dataset, config.domain, cache_dir(), device)
        dim = encoder.feature_dim
        small = min(len(images), len(ref_images)) <= dim and (which is None or bool(which & {"fid", "fid_inf"}))
        if small and not allow_small_n:  # before the encoder's passes: seconds, not minutes, to the error
            raise SampleError(
                f"FID needs more images a side than the {dim}-d {name} features: {len(images)} samples, "
                f"{len(ref_images)} reference images; give more, use --metrics without fid (KID has no such rule), or "
                "--allow-small-n to compute it anyway (biased; marked in the protocol)"
            )
        if small:
            fewest = min(len(images), len(ref_images))
            echo(f"warning: {fewest} images a side for {dim}-d {name} features: FID is biased and unstable at "
                 "this N (computed because of --allow-small-n; said in the protocol)")  # fmt: skip
        echo(f"scoring {len(images)} samples against {len(ref_images)} reference images with the {name} encoder ...")
        logits = which is None or "is" in which
        generated = encoder(images, cfg.batch_size, f"{name}: samples", None if logits else ("features",))
        real = encoder(ref_images, cfg.batch_size, f"{name}: reference", ("features",))
        if ref_digest is None:  # a folder's digest comes from its first pass
            ref_digest = _digest(ref_images)
            copies = _digest(images) == ref_digest
            if copies:
                echo("warning: the samples are the reference images: FID 0 and the like (a sanity check), not a score")
        values = sample_metrics(generated, real, cfg, which, small_n=allow_small_n, copies=copies)
        out.update({schema.encoder_key(k, name if (i or suite is None) else ""): v for k, v in values.items()})
        parts.append({"encoder": name, "weights_digest": encoder.weights_digest, "resize": encoder.resize,
                      "preprocessing": encoder.preprocessing})  # fmt: skip
    protocol = {
        "encoders": parts,
        "reference": {"what": where, "digest": ref_digest},
        "eval": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "ais"},
        "metrics": sorted(which) if which is not None else "all",
        "versions": library_versions(),
    }
    for side, how in (("samples", images), ("reference", ref_images)):
        if isinstance(how, FolderImages) and how.resized:
            protocol[f"{side}_resized"] = {"images": how.resized, "to": list(how.size), "resizer": RESIZER}
            echo(f"{side}: {how.resized} of {len(how)} images resized to {how.size[0]}x{how.size[1]}, the "
                 f"folder's most common size ({RESIZER}; in the protocol)")  # fmt: skip
    if allow_small_n:
        protocol["allow_small_n"] = True
    return Score(out, json_digest(protocol, 12), protocol, len(images), where, cfg.encoders)


def _kept(values: dict, which: frozenset[str], groups: dict) -> dict:
    """A suite evaluation's metrics cut to the groups asked for (every encoder's), with the sample counts."""
    keys = {k for g in which for k in groups[g]} | ({schema.FID_MATCHED} if "fid" in which else set())
    return {k: v for k, v in values.items() if schema.base_metric(k) in keys or k.startswith("eval/")}


def _fit(cfg, samples: int, reference: int):
    """The default settings fitted to the images at hand: every sample scored, subsets no larger than either side."""
    return dataclasses.replace(
        cfg,
        num_samples=samples,
        kid_subset_size=min(cfg.kid_subset_size, samples, reference),
        isc_splits=min(cfg.isc_splits, samples),
    )

"""Evaluation of one trained model: samples → features → sample metrics; VAEs also likelihood metrics.

Returns the metrics by their MLflow names and the protocol: everything that changes the numbers, whose
fingerprint (tag `bench.protocol`) decides which numbers may share a leaderboard table.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch

from baselines.contract import GenerativeModel
from bench.config import EvalConfig, TrainConfig
from bench.data import Dataset
from bench.eval.ais import decoder_likelihood
from bench.eval.encoders import Extractor, Reference, reference_features
from bench.eval.likelihood import observe_test, reconstruction_quality, vae_likelihood
from bench.eval.metrics import (
    COPYING_MIN_SAMPLES,
    FID_INF_MIN_FRACTION,
    FID_INF_POINTS,
    copying_reference,
    data_copying,
    fid,
    pairwise_distances,
    sample_metrics,
)
from bench.schema import (
    COPYING,
    EVAL_FEATURES_S,
    EVAL_GENERATE_S,
    EVAL_LIKELIHOOD_S,
    EVAL_SAMPLE_METRICS_S,
    FID,
    FID_MATCHED,
    GENERATED_IMAGES,
    MATCHED_IMAGES,
    REFERENCE_IMAGES,
    SELECTION_RULE,
    SELECTION_SEED_OFFSET,
    encoder_key,
    encoder_suffix,
)
from bench.storage import atomic_save, json_digest


@dataclass
class Evaluation:
    metrics: dict[str, float]
    protocol: dict
    fingerprint: str
    samples: torch.Tensor  # uint8 (N, C, H, W), the evaluated samples
    seconds: float
    reference: Reference  # the reference features used, loaded from the cache or computed
    details: dict = dataclasses.field(default_factory=dict)  # e.g. AIS's validation score per σ (`ais.json`)


def generate(model: GenerativeModel, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """n uint8 samples from the model, reproducible for a seed."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    with torch.no_grad():
        return torch.cat([model.sample(min(batch_size, n - i), generator=g).cpu() for i in range(0, n, batch_size)])


class PeriodicFID:
    """The cheap evaluation during training (TrainConfig.eval_every): FID of `n` samples in the domain extractor's
    features against the cached features of `reference` (the held-out split), logged as `periodic/fid` (fewer samples
    than the final evaluation, so biased upwards: a curve and a selection criterion, not a leaderboard number).

    Honest selection (schema.SELECTION_RULE): the latents come from `seed` (the evaluation seed plus
    SELECTION_SEED_OFFSET) and the real images from the split the reported metrics do not use, so the final
    evaluation of the chosen checkpoint is not the measurement that chose it.

    The lowest value so far is kept as the best checkpoint at `best_path` ({model, step, fid}); it survives a
    resume. Model mode, parameters and every RNG are left as they were, so training is the same with or without it.
    """

    def __init__(self, extractor: Extractor, reference: dict, n: int, batch_size: int, seed: int, best_path: Path):
        self.extractor, self.real, self.n = extractor, reference["features"], n
        self.batch_size, self.seed, self.best_path = batch_size, seed, Path(best_path)
        self.best_fid = math.inf
        if self.best_path.is_file():
            self.best_fid = torch.load(self.best_path, map_location="cpu", weights_only=True)["fid"]

    def __call__(self, model, step: int) -> dict[str, float]:
        was_training = model.training
        device = next(model.parameters()).device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            samples = generate(model, self.n, self.batch_size, self.seed)
        model.train(was_training)
        value = fid(self.extractor(samples, self.batch_size)["features"], self.real)
        if math.isfinite(value) and value < self.best_fid:
            self.best_fid = value
            state = {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            atomic_save({**state, "step": step, "fid": value}, self.best_path)
        return {"periodic/fid": value, "periodic/best_fid": self.best_fid}


def protocol(
    cfg: EvalConfig,
    dataset: Dataset,
    extractor: Extractor,
    reference_digest: str,
    device,
    observed=None,
    extras: list[dict] | None = None,
) -> dict:
    """Everything that changes an evaluation's numbers (DESIGN.md, Evaluation). `observed`: the VAEs' test images as
    the likelihood saw them; GANs and the real-data row get the same digest computed here, so they share the
    fingerprint of the VAEs they are compared with."""
    if observed is None:
        observed = observe_test(dataset.test_images[: cfg.likelihood_images or None], dataset.observation, cfg.seed)
    proto = {
        "extractor": extractor.name,
        "extractor_weights_digest": extractor.weights_digest,
        "preprocessing": extractor.preprocessing,
        "resize": extractor.resize,
        "reference": {
            "dataset": dataset.name,
            "dataset_digest": dataset.digest,
            "split": cfg.reference_split,
            "features_digest": reference_digest,
        },
        "num_samples": cfg.num_samples,
        "batch_size": cfg.batch_size,  # generation and feature batches: the latent draws are chunked by it
        "kid": {"subsets": cfg.kid_subsets, "subset_size": cfg.kid_subset_size, "kernel": "poly3"},
        "precision_recall": {
            "neighborhood": cfg.prc_neighborhood,
            "real_images": min(cfg.num_samples, len(dataset.split(cfg.reference_split)[0])),
            "generated_images": min(cfg.num_samples, len(dataset.split(cfg.reference_split)[0])),  # equal counts
        },
        "reference_images": len(dataset.split(cfg.reference_split)[0]),
        "real_row": {  # the real-data row: held-out images scored as samples, at the models' N where there are enough
            "split": held_out_split(cfg),
            "images": real_row_images(cfg, dataset),
            "models_also_at_this_n": real_row_images(cfg, dataset) < cfg.num_samples,  # fid_matched
        },
        "inception_score": {"splits": cfg.isc_splits},
        "density_coverage": {"neighborhood": cfg.dc_neighborhood, "counts": "equal, as precision/recall"},
        "data_copying": {  # Meehan et al. 2020
            "statistic": "C_T: Mann-Whitney z of nearest-training-feature distances, generated vs test, per cell",
            "cells": cfg.copying_cells,
            "clustering": "k-means (Lloyd, 50 iterations) of the train split's features, seeded",
            "training": "train split",
            "held_out": "test split",
            "min_samples_per_cell": COPYING_MIN_SAMPLES,
        },
        "fid_inf": {  # Chong & Forsyth 2020
            "points": FID_INF_POINTS,
            "smallest": f"max({FID_INF_MIN_FRACTION} x generated images, 2 x feature dimension + 1)",
            "fit": "least squares of FID on 1/N over random subsets of the generated features; the intercept",
        },
        "likelihood": {
            "split": "test",
            "images": cfg.likelihood_images or len(dataset.test_images),
            "iwae_k": cfg.iwae_k,
            "observation": dataset.observation,
            "observed": "binarised once on the CPU, one generator seeded by `seed`"
            if dataset.observation == "bernoulli"
            else "8-bit values at the bin centres",
            "observed_digest": observed.digest,  # sha256 of the observed test images, as uint8
        },
        **_ais_protocol(cfg),
        "precision": "fp32",
        "tf32": {
            "features": False,  # Extractor.__call__ switches TF32 off
            "generation": torch.device(device).type == "cuda"
            and bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
        },
        "seed": cfg.seed,
        "versions": {
            "torch": torch.__version__,
            "torch-fidelity": version("torch-fidelity"),
            "torchmetrics": version("torchmetrics"),
        },
    }
    if extras:  # absent without extra encoders: one-encoder protocols keep their fingerprints
        proto["extra_extractors"] = extras
    return proto


def _ais_protocol(cfg: EvalConfig) -> dict:
    """The AIS settings, present only when AIS runs (so protocols from before AIS keep their fingerprints)."""
    if not cfg.ais.images:
        return {}
    return {
        "likelihood_ais": {
            "split": "test",
            "observation": "gaussian N(f(z), sigma^2 I) on pixels in [0, 1]; sigma chosen on validation images",
            "validation": f"the last {cfg.ais.validation_images} test images",
            "step_sizes": "fixed per image by an adaptive pilot (pilot_chains chains), replayed by fresh scored chains",
            **dataclasses.asdict(cfg.ais),
        }
    }


def selection_protocol(train: TrainConfig, cfg: EvalConfig) -> dict:
    """How the best checkpoint was chosen (protocol.json → best_checkpoint_selection; not in the fingerprint: the
    final numbers do not depend on it)."""
    return {
        "rule": SELECTION_RULE,
        "every": train.eval_every,
        "extractor": "domain",
        "samples": train.eval_samples,
        "latent_seed": cfg.seed + SELECTION_SEED_OFFSET,
        "real_split": held_out_split(cfg),
    }


def held_out_split(cfg: EvalConfig) -> str:
    return "test" if cfg.reference_split == "train" else "train"


def real_row_images(cfg: EvalConfig, dataset: Dataset) -> int:
    """N of the real-data row: the models' N, or the whole held-out split when it is smaller (then the models are
    also scored at this N: fid_matched)."""
    return min(cfg.num_samples, len(dataset.split(held_out_split(cfg))[0]))


SELECTION_KEY = "best_checkpoint_selection"


def fingerprint(proto: dict) -> str:
    return json_digest({k: v for k, v in proto.items() if k != SELECTION_KEY}, 12)


def sample_counts(cfg: EvalConfig, dataset: Dataset, reference: int, generated: int | None = None) -> dict:
    """The N behind the sample metrics, logged with them so a leaderboard can state them."""
    return {
        GENERATED_IMAGES: float(cfg.num_samples if generated is None else generated),
        REFERENCE_IMAGES: float(reference),
        MATCHED_IMAGES: float(real_row_images(cfg, dataset)),
    }


def score_samples(
    samples: torch.Tensor,
    dataset: Dataset,
    cfg: EvalConfig,
    extractor: Extractor,
    ref,
    cache_dir: Path,
    extras: tuple[Extractor, ...] = (),
) -> tuple[dict, dict]:
    """The sample metrics of uint8 samples (cfg.num_samples, C, H, W) in every encoder's features, the first
    encoder's under the plain names and each extra one's with its suffix (fid_dinov2, ...), with the sample counts;
    the models' FID at the real-data row's N when that N is smaller (fid_matched); the data-copying statistic.
    Also returns details: each extra encoder's reference digest, the nearest training images of 8 samples in
    the first encoder's features (the report's figure), and the seconds spent on features and on metrics."""
    metrics = sample_counts(cfg, dataset, len(ref.features["features"]))
    details: dict = {"references": {}}
    matched = real_row_images(cfg, dataset)
    seconds = {EVAL_FEATURES_S: 0.0, EVAL_SAMPLE_METRICS_S: 0.0}
    for i, ex in enumerate((extractor, *extras)):
        reference = ref if i == 0 else reference_features(ex, dataset, cfg.reference_split, cache_dir, cfg.batch_size)
        t = time.perf_counter()
        features = ex(samples, cfg.batch_size)
        seconds[EVAL_FEATURES_S] += time.perf_counter() - t
        t = time.perf_counter()
        out = sample_metrics(features, reference.features, cfg)
        if matched < cfg.num_samples and matched > features["features"].shape[1]:
            # a seeded subset of the same samples at the real-data row's N (the bias of FID grows as 1/N)
            idx = torch.randperm(cfg.num_samples, generator=torch.Generator().manual_seed(cfg.seed))[:matched]
            out[FID_MATCHED] = fid(features["features"][idx], reference.features["features"])
        seconds[EVAL_SAMPLE_METRICS_S] += time.perf_counter() - t
        train_ref, test_ref = copying_splits(ex, dataset, cfg, cache_dir, reference)
        t = time.perf_counter()  # (the other split's features and the cells come from the cache: `prepare_copying`)
        train, test = train_ref.features["features"], test_ref.features["features"]
        cells = copying_cells(train_ref, test_ref, cfg, cache_dir)
        copying = data_copying(features["features"], train, test, cfg.copying_cells, cfg.seed, cells)
        if copying is not None:  # None: no cell with enough generated and test samples to test (not logged)
            out[COPYING] = copying
        metrics.update({encoder_key(k, ex.name if i else ""): v for k, v in out.items()})
        if i == 0:
            nearest = pairwise_distances(features["features"][:NEAREST_SHOWN], train).topk(3, largest=False).indices
            details["nearest"] = (samples[:NEAREST_SHOWN], dataset.train_images[nearest])  # (8, C, H, W), (8, 3, ...)
        else:
            details["references"][ex.name] = reference.digest
        seconds[EVAL_SAMPLE_METRICS_S] += time.perf_counter() - t
    details["seconds"] = seconds
    return metrics, details


NEAREST_SHOWN = 8  # samples shown beside their 3 nearest training images


def copying_splits(
    ex: Extractor, dataset: Dataset, cfg: EvalConfig, cache_dir: Path, reference: Reference
) -> tuple[Reference, Reference]:
    """The copying test's training and held-out features, (train, test): `reference` (the reference split's, already
    loaded) and the other split's from the cache."""
    splits = {cfg.reference_split: reference}
    for split in {"train", "test"} - set(splits):
        splits[split] = reference_features(ex, dataset, split, cache_dir, cfg.batch_size)
    return splits["train"], splits["test"]


def prepare_copying(ex: Extractor, dataset: Dataset, cfg: EvalConfig, cache_dir: Path) -> float:
    """The suite computes each encoder's copying cells once, before its cells start, so that workers running side
    by side (--cells-per-gpu) load them rather than each computing them. Returns the seconds it took."""
    start = time.perf_counter()
    reference = reference_features(ex, dataset, cfg.reference_split, cache_dir, cfg.batch_size)
    copying_cells(*copying_splits(ex, dataset, cfg, cache_dir, reference), cfg, cache_dir)
    return time.perf_counter() - start


def copying_cells(train: Reference, test: Reference, cfg: EvalConfig, cache_dir: Path) -> dict:
    """The model-independent half of the copying test (metrics.copying_reference: k-means cells of the training
    features, the test features' cells and nearest training distances): seconds per evaluation, the same for every
    model of a suite, so computed once per (train and test feature digests, cells, seed) and kept in the cache."""
    key = {"train": train.digest, "test": test.digest, "cells": cfg.copying_cells, "seed": cfg.seed, "version": 1}
    path = Path(cache_dir) / f"copying-{json_digest(key, 16)}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            return saved["reference"]
    reference = copying_reference(train.features["features"], test.features["features"], cfg.copying_cells, cfg.seed)
    atomic_save({"key": key, "reference": reference}, path, shared=True)
    return reference


def nearest_grid(samples: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
    """Rows of (sample, its 3 nearest training images): uint8 (8 · 4, C, H, W), for an 4-per-row grid."""
    return torch.cat([samples[:, None], nearest], dim=1).flatten(0, 1)


def evaluate_external(
    samples: torch.Tensor,
    dataset: Dataset,
    cfg: EvalConfig,
    extractor: Extractor,
    cache_dir: Path,
    device,
    extras: tuple[Extractor, ...] = (),
) -> Evaluation:
    """Samples made elsewhere (`bench eval`), scored exactly as a suite scores its models' samples: the same
    features, reference cache, metrics and protocol, so the fingerprint matches the suite's models."""
    start = time.perf_counter()
    ref = reference_features(extractor, dataset, cfg.reference_split, cache_dir, cfg.batch_size)
    metrics, details = score_samples(samples, dataset, cfg, extractor, ref, cache_dir, extras)
    metrics.update(details.pop("seconds"))
    proto = protocol(cfg, dataset, extractor, ref.digest, device, extras=extra_parts(extras, details))
    return Evaluation(metrics, proto, fingerprint(proto), samples, time.perf_counter() - start, ref, details)


def evaluate(
    model: GenerativeModel,
    dataset: Dataset,
    cfg: EvalConfig,
    extractor: Extractor,
    cache_dir: Path,
    echo=print,
    extras: tuple[Extractor, ...] = (),
) -> Evaluation:
    start = time.perf_counter()
    device = next(model.parameters()).device
    ref = reference_features(extractor, dataset, cfg.reference_split, cache_dir, cfg.batch_size)
    t = time.perf_counter()
    samples = generate(model, cfg.num_samples, cfg.batch_size, cfg.seed)
    generate_s = time.perf_counter() - t
    metrics, details = score_samples(samples, dataset, cfg, extractor, ref, cache_dir, extras)
    metrics.update({EVAL_GENERATE_S: generate_s, **details.pop("seconds")})  # where the evaluation's time goes
    observed = None
    if model.family == "vae":
        t = time.perf_counter()
        test = dataset.test_images[: cfg.likelihood_images or None]
        observed = observe_test(test, dataset.observation, cfg.seed)
        metrics.update(vae_likelihood(model, observed, cfg.iwae_k, min(cfg.batch_size, 100), cfg.seed))
        metrics.update(reconstruction_quality(model, test, cfg.batch_size))
        metrics[EVAL_LIKELIHOOD_S] = time.perf_counter() - t
    if cfg.ais.images:  # GANs and VAEs alike: the decoder's likelihood under a Gaussian observation model
        ais = decoder_likelihood(model, dataset.test_images, cfg.ais, cfg.seed, echo)
        metrics.update(ais["metrics"])
        details["ais"] = ais
    proto = protocol(cfg, dataset, extractor, ref.digest, device, observed, extra_parts(extras, details))
    return Evaluation(metrics, proto, fingerprint(proto), samples, time.perf_counter() - start, ref, details)


def extra_parts(extras: tuple[Extractor, ...], details: dict) -> list[dict]:
    """Each extra encoder's part of the protocol: what its numbers depend on."""
    return [
        {
            "extractor": ex.name,
            "weights_digest": ex.weights_digest,
            "preprocessing": ex.preprocessing,
            "resize": ex.resize,
            "features_digest": details["references"][ex.name],
            "metrics": f"<metric>_{encoder_suffix(ex.name)}",
        }
        for ex in extras
    ]


def evaluate_real(
    dataset: Dataset, cfg: EvalConfig, extractor: Extractor, cache_dir: Path, device, extras: tuple[Extractor, ...] = ()
) -> Evaluation:
    """The real-data row of a (dataset, protocol): held-out images scored as if they were samples, against the
    reference split, at the models' N (`real_row_images`). At that N its FID is the floor a perfect model reaches
    (train vs test); when the held-out split is smaller, the row is scored on all of it, its FID is a floor only for
    the models' fid_matched (the same N), and the report shows it only in the columns that do not depend on N. Same
    protocol and fingerprint as the models evaluated with `cfg` and `extractor`."""
    start = time.perf_counter()
    ref = reference_features(extractor, dataset, cfg.reference_split, cache_dir, cfg.batch_size)
    other = held_out_split(cfg)
    held_out = reference_features(extractor, dataset, other, cache_dir, cfg.batch_size).features
    n = real_row_images(cfg, dataset)
    idx = torch.randperm(len(held_out["features"]), generator=torch.Generator().manual_seed(cfg.seed))[:n]
    metrics = sample_counts(cfg, dataset, len(ref.features["features"]), generated=n)
    details: dict = {"references": {}}
    for i, ex in enumerate((extractor, *extras)):
        reference = ref if i == 0 else reference_features(ex, dataset, cfg.reference_split, cache_dir, cfg.batch_size)
        scored = held_out if i == 0 else reference_features(ex, dataset, other, cache_dir, cfg.batch_size).features
        out = sample_metrics({k: v[idx] for k, v in scored.items()}, reference.features, cfg)
        if n < cfg.num_samples:  # fewer held-out images than the models' N: comparable with fid_matched only
            out[FID_MATCHED] = out[FID]
        metrics.update({encoder_key(k, ex.name if i else ""): v for k, v in out.items()})
        if i:
            details["references"][ex.name] = reference.digest
    proto = protocol(cfg, dataset, extractor, ref.digest, device, extras=extra_parts(extras, details))
    shown = dataset.split(other)[0][idx[:64]]  # a grid of the held-out images scored
    return Evaluation(metrics, proto, fingerprint(proto), shown, time.perf_counter() - start, ref)

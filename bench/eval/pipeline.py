"""Evaluation of one trained model, or of samples made elsewhere, or of held-out real images: samples → features
in every encoder → sample metrics; VAEs also likelihood metrics; GANs and VAEs alike AIS when asked.

Everything real the evaluation compares with comes in as prepared bundles (bench.eval.real_features.RealFeatures,
the first encoder first); the numbers' protocol and fingerprint come from bench.eval.protocol.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from baselines.contract import GenerativeModel
from bench.config import EvalConfig
from bench.data import Dataset
from bench.eval.copying import data_copying
from bench.eval.decoder_ais import decoder_likelihood, has_own_model, own_model_check
from bench.eval.encoders import Encoder
from bench.eval.likelihood import observe_test, reconstruction_quality, vae_likelihood
from bench.eval.metrics import fid, pairwise_distances, sample_metrics
from bench.eval.protocol import fingerprint, protocol, real_row_images, sample_counts
from bench.eval.real_features import RealFeatures
from bench.schema import (
    COPYING,
    EVAL_FEATURES_S,
    EVAL_GENERATE_S,
    EVAL_LIKELIHOOD_S,
    EVAL_SAMPLE_METRICS_S,
    FID,
    FID_INF,
    FID_INF_REAL_MIN_RATIO,
    FID_INF_SE,
    FID_MATCHED,
    PERIODIC_BEST_FID,
    PERIODIC_FID,
    encoder_key,
)
from bench.storage import atomic_save

NEAREST_SHOWN = 8  # samples shown beside their 3 nearest training images


@dataclass
class Evaluation:
    metrics: dict[str, float]
    protocol: dict
    fingerprint: str
    samples: torch.Tensor  # uint8 (N, C, H, W), the evaluated samples
    seconds: float
    details: dict = dataclasses.field(default_factory=dict)  # AIS's validation score per σ (`ais.json`), nearest images


def generate(model: GenerativeModel, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """n uint8 samples from the model, reproducible for a seed."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    with torch.no_grad():
        return torch.cat([model.sample(min(batch_size, n - i), generator=g).cpu() for i in range(0, n, batch_size)])


class PeriodicFID:
    """The cheap evaluation during training (TrainConfig.eval_every): FID of `n` samples in the domain encoder's
    features against `real` (the validation split's features), logged as schema.PERIODIC_FID (fewer samples than the
    final evaluation, so biased upwards: a curve and a selection criterion, not a leaderboard number).

    Honest selection (schema.SELECTION_RULE): the latents come from `seed` (the evaluation seed plus
    SELECTION_SEED_OFFSET) and the real images from the validation split, carved out of the training data: no model
    trained on it and no reported number is scored on it, so the evaluation of the chosen checkpoint is not the
    measurement that chose it.

    The lowest value so far is kept as the best checkpoint at `best_path` ({model, step, fid}); it survives a
    resume. Model mode, parameters and every RNG are left as they were, so training is the same with or without it.
    """

    def __init__(self, encoder: Encoder, real: dict, n: int, batch_size: int, seed: int, best_path: Path):
        self.encoder, self.real, self.n = encoder, real["features"], n
        self.batch_size, self.seed, self.best_path = batch_size, seed, Path(best_path)
        self.best_fid = math.inf
        if self.best_path.is_file():
            self.best_fid = torch.load(self.best_path, map_location="cpu", weights_only=True)["fid"]

    def __call__(self, model, step: int) -> dict[str, float]:
        value = validation_fid(model, self.encoder, self.real, self.n, self.batch_size, self.seed)
        if math.isfinite(value) and value < self.best_fid:
            self.best_fid = value
            state = {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            atomic_save({**state, "step": step, "fid": value}, self.best_path)
        return {PERIODIC_FID: value, PERIODIC_BEST_FID: self.best_fid}


def validation_fid(model, encoder: Encoder, real: torch.Tensor, n: int, batch_size: int, seed: int) -> float:
    """FID of `n` samples (latents from `seed`) in `encoder`'s features against `real` (the validation split's
    features): the periodic FID of training and a sweep trial's score. Model mode and every RNG are left as they
    were."""
    was_training = model.training
    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        samples = generate(model, n, batch_size, seed)
    model.train(was_training)
    return fid(encoder(samples, batch_size)["features"], real)


def score_samples(
    samples: torch.Tensor, dataset: Dataset, cfg: EvalConfig, real: Sequence[RealFeatures]
) -> tuple[dict, dict]:
    """The sample metrics of uint8 samples (cfg.num_samples, C, H, W) in every encoder's features, the first
    encoder's under the plain names and each extra one's with its suffix (fid_dinov2, ...), with the sample counts;
    the models' FID at the real-data row's N when that N is smaller (fid_matched); the data-copying statistic.
    Also returns details: the nearest training images of 8 samples in the first encoder's features (the report's
    figure), and the seconds spent on features and on metrics."""
    metrics = sample_counts(cfg, dataset, len(real[0].reference.features["features"]))
    details: dict = {}
    matched = real_row_images(cfg, dataset)
    seconds = {EVAL_FEATURES_S: 0.0, EVAL_SAMPLE_METRICS_S: 0.0}
    for i, r in enumerate(real):
        t = time.perf_counter()
        features = r.encoder(samples, cfg.batch_size)
        seconds[EVAL_FEATURES_S] += time.perf_counter() - t
        t = time.perf_counter()
        out = sample_metrics(features, r.reference.features, cfg)
        if matched < cfg.num_samples and matched > features["features"].shape[1]:
            # a seeded subset of the same samples at the real-data row's N (the bias of FID grows as 1/N)
            idx = torch.randperm(cfg.num_samples, generator=torch.Generator().manual_seed(cfg.seed))[:matched]
            out[FID_MATCHED] = fid(features["features"][idx], r.reference.features["features"])
        train = r.split("train", cfg).features["features"]
        test = r.split("test", cfg).features["features"]
        copying = data_copying(features["features"], train, test, cfg.copying_cells, cfg.seed, r.copying)
        if copying is not None:  # None: no cell with enough generated samples to test (not logged)
            out[COPYING] = copying[COPYING]
            if i == 0:  # what it stood on, for the first encoder's C_T
                metrics.update({k: v for k, v in copying.items() if k != COPYING})
        metrics.update({encoder_key(k, r.encoder.name if i else ""): v for k, v in out.items()})
        if i == 0:
            nearest = pairwise_distances(features["features"][:NEAREST_SHOWN], train).topk(3, largest=False).indices
            details["nearest"] = (samples[:NEAREST_SHOWN], dataset.train_images[nearest])  # (8, C, H, W), (8, 3, ...)
        seconds[EVAL_SAMPLE_METRICS_S] += time.perf_counter() - t
    details["seconds"] = seconds
    return metrics, details


def nearest_grid(samples: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
    """Rows of (sample, its 3 nearest training images): uint8 (8 · 4, C, H, W), for an 4-per-row grid."""
    return torch.cat([samples[:, None], nearest], dim=1).flatten(0, 1)


def evaluate(
    model: GenerativeModel,
    dataset: Dataset,
    cfg: EvalConfig,
    real: Sequence[RealFeatures],
    echo=print,
    likelihood: bool = True,
) -> Evaluation:
    """A trained model's samples scored in every encoder of `real`; with `likelihood`, the VAEs' likelihoods and AIS
    (when cfg.ais asks for it)."""
    start = time.perf_counter()
    device = next(model.parameters()).device
    t = time.perf_counter()
    samples = generate(model, cfg.num_samples, cfg.batch_size, cfg.seed)
    generate_s = time.perf_counter() - t
    metrics, details = score_samples(samples, dataset, cfg, real)
    metrics.update({EVAL_GENERATE_S: generate_s, **details.pop("seconds")})  # where the evaluation's time goes
    observed = iwae = None
    if model.family == "vae" and likelihood:
        t = time.perf_counter()
        test = dataset.test_images[: cfg.likelihood_images or None]
        observed = observe_test(test, dataset.observation, cfg.seed)
        bounds, iwae = vae_likelihood(model, observed, cfg.iwae_k, min(cfg.batch_size, 100), cfg.seed)
        metrics.update(bounds)
        metrics.update(reconstruction_quality(model, test, cfg.batch_size))
        metrics[EVAL_LIKELIHOOD_S] = time.perf_counter() - t
    if cfg.ais.images and likelihood:  # GANs and VAEs alike: a code length under a discretised Gaussian decoder
        ais = decoder_likelihood(model, dataset.test_images, cfg.ais, cfg.seed, echo)
        metrics.update(ais["metrics"])
        if observed is not None and has_own_model(model):  # and a VAE under its own model, against its IWAE bound
            own = own_model_check(model, observed.images, iwae, cfg.ais, cfg.seed, echo)
            metrics.update(own["metrics"])
            ais["own_model_check"] = own["warning"] or "ok"
        details["ais"] = ais
    proto = protocol(cfg, dataset, real, device, observed)
    return Evaluation(metrics, proto, fingerprint(proto), samples, time.perf_counter() - start, details)


def evaluate_samples(
    samples: torch.Tensor, dataset: Dataset, cfg: EvalConfig, real: Sequence[RealFeatures], device
) -> Evaluation:
    """Samples made elsewhere (`bench eval`), scored exactly as a suite scores its models' samples: the same
    features, metrics and protocol, so the fingerprint matches the suite's models."""
    start = time.perf_counter()
    metrics, details = score_samples(samples, dataset, cfg, real)
    metrics.update(details.pop("seconds"))
    proto = protocol(cfg, dataset, real, device)
    return Evaluation(metrics, proto, fingerprint(proto), samples, time.perf_counter() - start, details)


def evaluate_real(dataset: Dataset, cfg: EvalConfig, real: Sequence[RealFeatures], device) -> Evaluation:
    """The real-data row of a (dataset, protocol): held-out images scored as if they were samples, against the
    reference split, at the models' N (`real_row_images`). At that N its FID is the floor a perfect model reaches
    (train vs test); when the held-out split is smaller, the row is scored on all of it, its FID is a floor only for
    the models' fid_matched (the same N), and the report shows it only in the columns that do not depend on N. Same
    protocol and fingerprint as the models evaluated with `cfg` and the encoders of `real`."""
    start = time.perf_counter()
    n = real_row_images(cfg, dataset)
    idx = torch.randperm(len(real[0].held_out.features["features"]), generator=torch.Generator().manual_seed(cfg.seed))
    idx = idx[:n]
    metrics = sample_counts(cfg, dataset, len(real[0].reference.features["features"]), generated=n)
    for i, r in enumerate(real):
        out = sample_metrics({k: v[idx] for k, v in r.held_out.features.items()}, r.reference.features, cfg)
        if n < FID_INF_REAL_MIN_RATIO * r.held_out.features["features"].shape[1]:
            # too few held-out images for the 1/N fit to mean anything: biased, noisy, often below 0
            out.pop(FID_INF, None)
            out.pop(FID_INF_SE, None)
        if n < cfg.num_samples:  # fewer held-out images than the models' N: comparable with fid_matched only
            out[FID_MATCHED] = out[FID]
        metrics.update({encoder_key(k, r.encoder.name if i else ""): v for k, v in out.items()})
    proto = protocol(cfg, dataset, real, device)
    shown = dataset.split(cfg.held_out_split)[0][idx[:64]]  # a grid of the held-out images scored
    return Evaluation(metrics, proto, fingerprint(proto), shown, time.perf_counter() - start)

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

from bench.ais import decoder_likelihood
from bench.config import EvalConfig
from bench.data import Dataset
from bench.features import Extractor, Reference, reference_features
from bench.likelihood import reconstruction_quality, vae_likelihood
from bench.metrics import FID_INF_MIN_FRACTION, FID_INF_POINTS, fid, sample_metrics
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


def generate(model, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """n uint8 samples from the model, reproducible for a seed."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    with torch.no_grad():
        return torch.cat([model.sample(min(batch_size, n - i), generator=g).cpu() for i in range(0, n, batch_size)])


class PeriodicFID:
    """The cheap evaluation during training (TrainConfig.eval_every): FID of `n` samples in the domain extractor's
    features against the cached reference features, logged as `periodic/fid` (fewer samples than the final
    evaluation, so biased upwards: a curve and a selection criterion, not a leaderboard number).

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


def protocol(cfg: EvalConfig, dataset: Dataset, extractor: Extractor, reference_digest: str, device) -> dict:
    """Everything that changes an evaluation's numbers (DESIGN.md, Evaluation)."""
    return {
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
        "inception_score": {"splits": cfg.isc_splits},
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


def _ais_protocol(cfg: EvalConfig) -> dict:
    """The AIS settings, present only when AIS runs (so protocols from before AIS keep their fingerprints)."""
    if not cfg.ais.images:
        return {}
    return {
        "likelihood_ais": {
            "split": "test",
            "observation": "gaussian N(f(z), sigma^2 I) on pixels in [0, 1]; sigma chosen on validation images",
            "validation": f"the last {cfg.ais.validation_images} test images",
            "step_sizes": "fixed per image by an adaptive pilot of pilot_chains chains, replayed by fresh scored chains",
            **dataclasses.asdict(cfg.ais),
        }
    }


def fingerprint(proto: dict) -> str:
    return json_digest(proto, 12)


def evaluate(model, dataset: Dataset, cfg: EvalConfig, extractor: Extractor, cache_dir: Path, echo=print) -> Evaluation:
    start = time.perf_counter()
    device = next(model.parameters()).device
    ref = reference_features(extractor, dataset, cfg.reference_split, cache_dir, cfg.batch_size)
    samples = generate(model, cfg.num_samples, cfg.batch_size, cfg.seed)
    metrics = sample_metrics(extractor(samples, cfg.batch_size), ref.features, cfg)
    if model.family == "vae":
        test = dataset.test_images[: cfg.likelihood_images or None]
        metrics.update(vae_likelihood(model, test, cfg.iwae_k, min(cfg.batch_size, 100), cfg.seed))
        metrics.update(reconstruction_quality(model, test, cfg.batch_size))
    details = {}
    if cfg.ais.images:  # GANs and VAEs alike: the decoder's likelihood under a Gaussian observation model
        ais = decoder_likelihood(model, dataset.test_images, cfg.ais, cfg.seed, echo)
        metrics.update(ais["metrics"])
        details["ais"] = ais
    proto = protocol(cfg, dataset, extractor, ref.digest, device)
    return Evaluation(metrics, proto, fingerprint(proto), samples, time.perf_counter() - start, ref, details)


def evaluate_real(dataset: Dataset, cfg: EvalConfig, extractor: Extractor, cache_dir: Path, device) -> Evaluation:
    """The real-data row of a (dataset, protocol): the held-out split scored as if it were samples, against the
    reference split. Its FID is the floor a perfect model can reach with this many images (train vs test), its IS
    the real data's. Same protocol and fingerprint as the models evaluated with `cfg` and `extractor`."""
    start = time.perf_counter()
    ref = reference_features(extractor, dataset, cfg.reference_split, cache_dir, cfg.batch_size)
    other = "test" if cfg.reference_split == "train" else "train"
    held_out = reference_features(extractor, dataset, other, cache_dir, cfg.batch_size).features
    n = min(cfg.num_samples, len(held_out["features"]))
    idx = torch.randperm(len(held_out["features"]), generator=torch.Generator().manual_seed(cfg.seed))[:n]
    metrics = sample_metrics({k: v[idx] for k, v in held_out.items()}, ref.features, cfg)
    metrics["real_images"] = float(n)
    proto = protocol(cfg, dataset, extractor, ref.digest, device)
    shown = dataset.split(other)[0][idx[:64]]  # a grid of the held-out images scored
    return Evaluation(metrics, proto, fingerprint(proto), shown, time.perf_counter() - start, ref)

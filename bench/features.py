"""Feature extractors: images (uint8) → features for FID/KID/precision/recall and class logits for IS.

Each extractor has a name, a digest of its weights and a preprocessing spec: together they are part of the
protocol fingerprint, and they key the on-disk cache of real-data features.

- `domain`: a small CNN trained by the suite on the dataset's own training labels with a fixed recipe and seed
  (bench.toml [features.domain]), cached by (dataset digest, recipe). Fast on a CPU; its numbers are comparable
  only with other `domain` numbers on the same dataset, never with Inception numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import DomainConfig
from bench.data import Dataset

DOMAIN_VERSION = "domain-cnn-v1"  # bump when the architecture or training code changes


class ExtractorError(RuntimeError):
    """The extractor cannot be trusted or built; the message says why and what to do."""


@dataclass
class Extractor:
    name: str
    weights_digest: str
    preprocessing: str  # how uint8 images reach the network
    net: nn.Module  # maps float images to {"features": (N, d), "logits": (N, K)}
    info: dict  # e.g. test accuracy of the domain classifier

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 500) -> dict[str, torch.Tensor]:
        """uint8 (N, C, H, W) → {"features": float64 (N, d), "logits": float64 (N, K)} on the CPU."""
        device = next(self.net.parameters()).device
        out: dict[str, list[torch.Tensor]] = {"features": [], "logits": []}
        self.net.eval()
        for chunk in images.split(batch_size):
            result = self.net(chunk.to(device).float() / 255.0)
            for key in out:
                out[key].append(result[key].double().cpu())
        return {key: torch.cat(parts) for key, parts in out.items()}


class DomainNet(nn.Module):
    """Two conv blocks and a feature layer; works for 1×28×28 and 3×32×32."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, feature_dim: int):
        super().__init__()
        c, h, w = image_shape
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, H/2, W/2)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 64, H/4, W/4)
            nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), feature_dim),  # (B, d): the features
        )
        self.head = nn.Linear(feature_dim, num_classes)  # (B, K)
        # Per-dimension standardisation of the features with training-split statistics, set once after training
        # (buffers, so they are in the weights digest): KID's cubic kernel k(x, y) = (x·y/d + 1)³ assumes
        # features of order one, as Inception's pool features are.
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {"features": (h - self.feature_mean) / self.feature_std, "logits": self.head(F.relu(h))}


def weights_digest(net: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def domain_extractor(dataset: Dataset, recipe: DomainConfig, cache_dir: Path, device: torch.device) -> Extractor:
    """The dataset's `domain` classifier: loaded from the cache or trained with the fixed recipe, then checked."""
    spec = {"version": DOMAIN_VERSION, "dataset_digest": dataset.digest, "recipe": dataclasses.asdict(recipe)}
    spec["recipe"].pop("min_test_accuracy")  # a gate, not part of what is trained
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"domain-{dataset.name}-{key}.pt"
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(recipe.seed)
        net = DomainNet(dataset.image_shape, dataset.num_classes, recipe.feature_dim)
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("spec") != spec:
            raise ExtractorError(f"cached extractor {path} does not match its key; delete it and run again")
        net.load_state_dict(saved["state_dict"])
        accuracy = saved["test_accuracy"]
    else:
        accuracy = _train_domain(net, dataset, recipe, device)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        torch.save({"spec": spec, "state_dict": net.state_dict(), "test_accuracy": accuracy}, tmp)
        tmp.replace(path)
    floor = recipe.floor(dataset.name)
    if accuracy < floor:
        raise ExtractorError(
            f"the domain classifier for {dataset.name} reaches {accuracy:.3f} test accuracy, below the floor "
            f"{floor} ([features.domain] min_test_accuracy); its features would not be trusted. "
            f"Raise [features.domain] steps or check the dataset"
        )
    net.to(device).eval()
    return Extractor(
        "domain",
        weights_digest(net),
        "uint8/255, native resolution",
        net,
        {"test_accuracy": accuracy, "cache": str(path)},
    )


def _train_domain(net: DomainNet, dataset: Dataset, recipe: DomainConfig, device: torch.device) -> float:
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    g = torch.Generator().manual_seed(recipe.seed)  # the batch order is part of the recipe
    x, y = dataset.train_images.to(device), dataset.train_labels.to(device)
    for _ in range(recipe.steps):
        idx = torch.randint(len(x), (recipe.batch_size,), generator=g).to(device)
        loss = F.cross_entropy(net(x[idx].float() / 255.0)["logits"], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        h = torch.cat([net.body(xb.float() / 255.0) for xb in x.split(1000)])  # (N_train, d)
        net.feature_mean.copy_(h.mean(0))
        net.feature_std.copy_(h.std(0).clamp_min(1e-6))
        correct = 0
        for xb, yb in zip(dataset.test_images.split(1000), dataset.test_labels.split(1000), strict=True):
            pred = net(xb.to(device).float() / 255.0)["logits"].argmax(1).cpu()
            correct += (pred == yb).sum().item()
    return correct / len(dataset.test_images)


EXTRACTORS: dict[str, Callable[..., Extractor]] = {
    "domain": domain_extractor,
}


def build_extractor(name: str, dataset: Dataset, recipe: DomainConfig, cache_dir: Path, device) -> Extractor:
    if name == "inception" and name not in EXTRACTORS:
        raise ExtractorError(
            "the inception extractor (torch-fidelity's inception-v3-compat) is not available in this version of "
            "genbench yet; run with --set eval.extractor=domain, or use a suite with the domain extractor"
        )
    if name not in EXTRACTORS:
        raise ExtractorError(f"unknown feature extractor {name!r}; known extractors: {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name](dataset, recipe, cache_dir, device)


def reference_features(
    extractor: Extractor, dataset: Dataset, split: str, cache_dir: Path, batch_size: int = 500
) -> tuple[dict[str, torch.Tensor], str]:
    """Features of a real split, computed once per (dataset digest, split, extractor, weights, preprocessing).

    Returns the features and their digest (logged in the protocol). The key is stored in the file and checked on
    load, so a cache file can never be used for another key.
    """
    key = {
        "dataset": dataset.name,
        "dataset_digest": dataset.digest,
        "split": split,
        "extractor": extractor.name,
        "weights_digest": extractor.weights_digest,
        "preprocessing": extractor.preprocessing,
    }
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"ref-{dataset.name}-{split}-{extractor.name}-{key_hash}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            return saved["features"], saved["digest"]
    images, _ = dataset.split(split)
    features = extractor(images, batch_size)
    h = hashlib.sha256()
    for name in sorted(features):
        h.update(features[name].numpy().tobytes())
    digest = h.hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial")
    torch.save({"key": key, "features": features, "digest": digest}, tmp)
    tmp.replace(path)
    return features, digest

"""Feature extractors: images (uint8) → features for FID/KID/precision/recall and class logits for IS.

Each extractor has a name, a digest of its weights and a preprocessing spec: together they are part of the
protocol fingerprint, and they key the on-disk cache of real-data features.

- `inception`: torch-fidelity's `inception-v3-compat` (the TF-FID Inception-v3, with TF1's bilinear resize to
  299×299), pool features (2048-d) and unbiased logits (1008 classes). Weights from `BENCH_INCEPTION_WEIGHTS`,
  torch's hub cache, or torch-fidelity's download; offline without them, a clear error before any training.
- `dinov2`, `dinov2-vitb14`, `dinov2-vits14`: DINOv2 ViT-L/14 (B/14, S/14) via timm, the CLS embedding at 224×224:
  FD_DINOv2 of Stein et al. 2023. Weights from `BENCH_DINOV2_WEIGHTS`, torch's hub cache, or Meta's download.
- `domain`: a small CNN trained by the suite on the dataset's own training labels with a fixed recipe and seed
  (bench.toml [features.domain]), cached by (dataset digest, recipe). Fast on a CPU; its numbers are comparable
  only with other `domain` numbers on the same dataset, never with Inception numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.config import DomainConfig
from bench.data import Dataset
from bench.devices import strict_fp32
from bench.storage import atomic_save, bytes_digest, json_digest

DOMAIN_VERSION = "domain-cnn-v1"  # bump when the architecture or training code changes


class ExtractorError(RuntimeError):
    """The extractor cannot be trusted or built; the message says why and what to do."""


@dataclass
class Extractor:
    name: str
    weights_digest: str
    preprocessing: str  # how uint8 images reach the network
    net: nn.Module  # maps uint8 images (B, C, H, W) to {"features": (B, d), "logits": (B, K)}
    info: dict  # e.g. test accuracy of the domain classifier, the weights file
    resize: str = "none"  # the resize to the network's input size, if any
    feature_dim: int = 0  # d of the features; FID needs more than d images on each side

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 500) -> dict[str, torch.Tensor]:
        """uint8 (N, C, H, W) → {"features": float64 (N, d), "logits": float64 (N, K)} on the CPU.

        Always in strict fp32: TF32 is switched off for the extraction (and restored), whatever training used."""
        if images.dtype != torch.uint8:
            raise ExtractorError(f"feature extractors take uint8 images, got {images.dtype}")
        device = next(self.net.parameters()).device
        out: dict[str, list[torch.Tensor]] = {}
        self.net.eval()
        with strict_fp32():
            for chunk in images.split(batch_size):
                for key, value in self.net(chunk.to(device)).items():  # features; logits when it classifies
                    out.setdefault(key, []).append(value.double().cpu())
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
        h = self.body(x.float() / 255.0)  # uint8 in
        return {"features": (h - self.feature_mean) / self.feature_std, "logits": self.head(F.relu(h))}


def weights_digest(net: nn.Module) -> str:
    state = sorted(net.state_dict().items())
    return bytes_digest(part for name, t in state for part in (name, t.detach().cpu().contiguous().numpy().tobytes()))


def domain_extractor(dataset: Dataset, recipe: DomainConfig, cache_dir: Path, device: torch.device) -> Extractor:
    """The dataset's `domain` classifier: loaded from the cache or trained with the fixed recipe, then checked."""
    spec = {"version": DOMAIN_VERSION, "dataset_digest": dataset.digest, "recipe": dataclasses.asdict(recipe)}
    spec["recipe"].pop("min_test_accuracy")  # a gate, not part of what is trained
    key = json_digest(spec)
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
        atomic_save({"spec": spec, "state_dict": net.state_dict(), "test_accuracy": accuracy}, path, shared=True)
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
        feature_dim=recipe.feature_dim,
    )


def _train_domain(net: DomainNet, dataset: Dataset, recipe: DomainConfig, device: torch.device) -> float:
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    g = torch.Generator().manual_seed(recipe.seed)  # the batch order is part of the recipe
    x, y = dataset.train_images.to(device), dataset.train_labels.to(device)
    for _ in range(recipe.steps):
        idx = torch.randint(len(x), (recipe.batch_size,), generator=g).to(device)
        loss = F.cross_entropy(net(x[idx])["logits"], y[idx])
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
            pred = net(xb.to(device))["logits"].argmax(1).cpu()
            correct += (pred == yb).sum().item()
    return correct / len(dataset.test_images)


# torch-fidelity's Inception-v3 for FID (converted from the TF graph of Heusel et al.'s TTUR code).
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
# torch-fidelity's URL_INCEPTION_V3 (not imported from it: importing torch-fidelity costs seconds; a test compares)
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
INCEPTION_HASH_PREFIX = "6726825d"  # torch.hub convention: the file's sha256 starts with it
WEIGHTS_ENV = "BENCH_INCEPTION_WEIGHTS"


def hub_inception_path() -> Path:
    """Where torch's hub cache keeps the weights: where torch-fidelity's own download puts them."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def inception_weights() -> Path:
    """The Inception weights file: $BENCH_INCEPTION_WEIGHTS, else torch's hub cache, else torch-fidelity's
    download into the hub cache (not when BENCH_OFFLINE=1). Raises ExtractorError naming every option."""
    return weights_file(
        WEIGHTS_ENV,
        INCEPTION_FILE,
        INCEPTION_URL,
        f"the inception extractor needs torch-fidelity's Inception-v3 weights ({INCEPTION_FILE})",
        "use the domain extractor: --set eval.extractor=domain",
        hash_prefix=INCEPTION_HASH_PREFIX,
    )


def weights_file(env_var: str, file: str, url: str, need: str, otherwise: str, hash_prefix: str | None = None) -> Path:
    """A pretrained encoder's weights: the file named by $env_var, else `file` in torch's hub cache, else a download
    of `url` into that cache (not when BENCH_OFFLINE=1). ExtractorError naming every way to provide them: `need`
    says what is missing, `otherwise` the way around it."""
    hub = Path(torch.hub.get_dir()) / "checkpoints" / file
    env = os.environ.get(env_var)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ExtractorError(
                f"{env_var}={env} is not a file; point it at {file}, or unset it to use torch's hub cache ({hub})"
            )
        return path
    if hub.is_file():
        return hub
    if os.environ.get("BENCH_OFFLINE") == "1":
        why = "BENCH_OFFLINE=1 is set, so no download was tried"
    else:
        try:
            hub.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(hub), hash_prefix=hash_prefix, progress=True)
            return hub
        except (OSError, urllib.error.URLError, RuntimeError) as e:  # no network, HTTP error, hash mismatch
            hub.unlink(missing_ok=True)
            why = f"the download from {url} failed ({type(e).__name__}: {e})"
    raise ExtractorError(
        f"{need} and found none: {env_var} is not set, they are not in torch's hub cache ({hub}), and {why}. "
        f"Set {env_var}=/path/to/{file}, copy the file into {hub.parent}, run once with network access, or {otherwise}"
    )


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return bytes_digest(iter(lambda: f.read(1 << 20), b""))


class InceptionNet(nn.Module):
    """torch-fidelity's inception-v3-compat: uint8 images (grayscale expanded to 3 channels) → 2048-d pool
    features and the 1008 unbiased logits it uses for the Inception Score."""

    def __init__(self, weights: Path):
        super().__init__()
        from torch_fidelity import feature_extractor_inceptionv3 as fidelity_inception  # seconds to import: here only

        self.net = fidelity_inception.FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights)
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale → RGB, as torch-fidelity expects 3×H×W uint8
        features, logits = self.net(x)
        return {"features": features, "logits": logits}


def inception_extractor(dataset: Dataset, recipe: DomainConfig, cache_dir: Path, device: torch.device) -> Extractor:
    """The standard extractor; the same network for every dataset (the arguments keep one registry signature)."""
    weights = inception_weights()
    try:
        net = InceptionNet(weights)
    except Exception as e:  # a truncated or foreign file: torch.load / load_state_dict errors
        raise ExtractorError(
            f"cannot load Inception weights from {weights} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"it must be torch-fidelity's {INCEPTION_FILE}"
        ) from e
    return Extractor(
        "inception",
        file_digest(weights),
        "uint8; grayscale repeated to 3 channels; (x-128)/128 in fp32 (torch-fidelity inception-v3-compat)",
        net.to(device).eval(),
        {"weights": str(weights)},
        resize="bilinear to 299x299, TF1-compatible (torch-fidelity interpolate_bilinear_2d_like_tensorflow1x)",
        feature_dim=2048,
    )


# DINOv2 (Oquab et al. 2023) as Stein et al. 2023 use it for FD_DINOv2 (dgm-eval's default encoder: ViT-L/14),
# built by timm; the weights are Meta's released checkpoints (or timm's conversion of them).
DINOV2 = {  # extractor name → (timm architecture, Meta's checkpoint file, its URL)
    name: (
        arch,
        f"dinov2_{short}_pretrain.pth",
        f"https://dl.fbaipublicfiles.com/dinov2/dinov2_{short}/dinov2_{short}_pretrain.pth",
    )
    for name, arch, short in (
        ("dinov2", "vit_large_patch14_dinov2", "vitl14"),
        ("dinov2-vitb14", "vit_base_patch14_dinov2", "vitb14"),
        ("dinov2-vits14", "vit_small_patch14_dinov2", "vits14"),
    )
}
DINOV2_ENV = "BENCH_DINOV2_WEIGHTS"
DINOV2_SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def dinov2_weights(name: str) -> Path:
    """The DINOv2 weights file of extractor `name`: $BENCH_DINOV2_WEIGHTS, else torch's hub cache (where
    torch.hub.load("facebookresearch/dinov2", ...) keeps Meta's checkpoint, as dgm-eval and torch-fidelity use it),
    else a download from Meta (not when BENCH_OFFLINE=1). Raises ExtractorError naming every option."""
    _, file, url = DINOV2[name]
    return weights_file(
        DINOV2_ENV,
        file,
        url,
        f"the {name} extractor needs DINOv2 weights ({file}, or timm's conversion of it)",
        f"drop {name!r} from eval.extra_extractors",
    )


class DinoV2Net(nn.Module):
    """uint8 images → the CLS embedding of DINOv2 after its final norm (the features of FD_DINOv2): grayscale
    repeated to 3 channels, [0, 1], bicubic resize to 224×224, ImageNet normalisation, fp32."""

    def __init__(self, name: str, weights: Path):
        super().__init__()
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn

        self.vit = timm.create_model(DINOV2[name][0], pretrained=False, num_classes=0, img_size=DINOV2_SIZE)
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        # Meta's checkpoints carry a mask token and positional embeddings for 518×518; timm's filter drops the
        # one and resamples the other to the 16×16 patch grid of a 224×224 input
        self.vit.load_state_dict(checkpoint_filter_fn(state, self.vit), strict=True)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = x.float() / 255.0
        x = F.interpolate(x, size=(DINOV2_SIZE, DINOV2_SIZE), mode="bicubic", align_corners=False)
        return {"features": self.vit((x - self.mean) / self.std)}


def dinov2_extractor(name: str, dataset: Dataset, recipe: DomainConfig, cache_dir: Path, device) -> Extractor:
    weights = dinov2_weights(name)
    try:
        net = DinoV2Net(name, weights)
    except Exception as e:  # a truncated file, or another architecture's weights
        raise ExtractorError(
            f"cannot load {name} weights from {weights} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); it "
            f"must be Meta's {DINOV2[name][1]} (or timm's conversion of it)"
        ) from e
    from importlib.metadata import version

    return Extractor(
        name,
        file_digest(weights),
        f"uint8/255; grayscale repeated to 3 channels; ImageNet mean/std; fp32; CLS token after the final norm "
        f"(timm {version('timm')} {DINOV2[name][0]})",
        net.to(device).eval(),
        {"weights": str(weights)},
        resize=f"bicubic (torch, a = -0.75, no antialias) to {DINOV2_SIZE}x{DINOV2_SIZE}",
        feature_dim=net.vit.num_features,
    )


EXTRACTORS: dict[str, Callable[..., Extractor]] = {
    "domain": domain_extractor,
    "inception": inception_extractor,
    **{name: functools.partial(dinov2_extractor, name) for name in DINOV2},
}


def find_weights(name: str) -> Path | None:
    """The weights file extractor `name` will load (None for `domain`, which trains its own): ExtractorError naming
    every way to provide them when there are none. Cheap: no network is built."""
    if name == "inception":
        return inception_weights()
    if name in DINOV2:
        return dinov2_weights(name)
    return None


def build_extractor(name: str, dataset: Dataset, recipe: DomainConfig, cache_dir: Path, device) -> Extractor:
    if name not in EXTRACTORS:
        raise ExtractorError(f"unknown feature extractor {name!r}; known extractors: {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name](dataset, recipe, cache_dir, device)


@dataclass
class Reference:
    """Features of a real split and where they came from."""

    features: dict[str, torch.Tensor]  # {"features": float64 (N, d), "logits": float64 (N, K)}
    digest: str  # sha256 of the features: the protocol's reference statistics digest
    cached: bool  # loaded from the cache (True) or computed now (False)
    seconds: float  # time to load or compute them
    path: Path


def reference_key(extractor: Extractor, dataset: Dataset, split: str) -> dict:
    """Everything the reference features depend on; stored inside the cache file and hashed into its name."""
    return {
        "dataset": dataset.name,
        "dataset_digest": dataset.digest,
        "split": split,
        "extractor": extractor.name,
        "weights_digest": extractor.weights_digest,
        "preprocessing": extractor.preprocessing,
        "resize": extractor.resize,
    }


def reference_features(
    extractor: Extractor, dataset: Dataset, split: str, cache_dir: Path, batch_size: int = 500
) -> Reference:
    """Features of a real split, computed once per (dataset digest, split, extractor, weights, preprocessing,
    resize) and kept under `cache_dir` as ref-<dataset>-<split>-<extractor>-<key hash>.pt.

    The full key is stored in the file and compared on load, so a file can never serve another key (a stale or
    colliding file is recomputed and replaced). Features are stored as float32 when that is lossless (both
    extractors compute in fp32), which halves the file; they are returned as float64.
    """
    start = time.perf_counter()
    key = reference_key(extractor, dataset, split)
    key_hash = json_digest(key)
    path = Path(cache_dir) / f"ref-{dataset.name}-{split}-{extractor.name}-{key_hash}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            feats = {name: value.double() for name, value in saved["features"].items()}
            return Reference(feats, saved["digest"], True, time.perf_counter() - start, path)
    images, _ = dataset.split(split)
    feats = extractor(images, batch_size)
    digest = bytes_digest(feats[name].numpy().tobytes() for name in sorted(feats))
    stored = {name: _compact(value) for name, value in feats.items()}
    atomic_save({"key": key, "features": stored, "digest": digest}, path, shared=True)
    return Reference(feats, digest, False, time.perf_counter() - start, path)


def _compact(values: torch.Tensor) -> torch.Tensor:
    single = values.float()
    return single if torch.equal(single.double(), values) else values

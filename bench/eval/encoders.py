"""Feature encoders: images (uint8) → features for FID/KID/precision/recall and class logits for IS.

Each encoder has a name, a digest of its weights and a preprocessing spec: together they are part of the
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
import math
import os
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
from bench.schema import ENCODERS
from bench.storage import bytes_digest, cached, file_digest, json_digest

DOMAIN_VERSION = "domain-cnn-v1"  # bump when the architecture or training code changes


class EncoderError(RuntimeError):
    """The encoder cannot be trusted or built; the message says why and what to do."""


@dataclass
class Encoder:
    name: str
    weights_digest: str
    preprocessing: str  # how uint8 images reach the network
    net: nn.Module  # maps uint8 images (B, C, H, W) to {"features": (B, d), "logits": (B, K)}
    info: dict  # e.g. test accuracy of the domain classifier, the weights file
    resize: str = "none"  # the resize to the network's input size, if any
    feature_dim: int = 0  # d of the features; FID needs more than d images on each side

    @torch.no_grad()
    def __call__(
        self, images, batch_size: int = 500, progress: str = "", keys: tuple[str, ...] | None = None
    ) -> dict[str, torch.Tensor]:
        """uint8 (N, C, H, W) → {"features": float64 (N, d), "logits": float64 (N, K)} on the CPU; with `progress`,
        a progress bar of that title on stderr (where stderr is a terminal). `images` is a tensor, or a source that
        streams them (`len()` and `batches(batch_size)`, as a folder of images does), never held whole. `keys`: only
        those outputs are kept (("features",) leaves out the logits a reference's pass does not need).

        Always in strict fp32: TF32 is switched off for the extraction (and restored), whatever training used."""
        if isinstance(images, torch.Tensor):
            if images.dtype != torch.uint8:
                raise EncoderError(f"feature encoders take uint8 images, got {images.dtype}")
            chunks = images.split(batch_size)
        else:
            chunks = images.batches(batch_size)
        device = next(self.net.parameters()).device
        n = len(images)
        out: dict[str, torch.Tensor] = {}  # filled in place: the features are held once, never as parts and a copy
        done = 0
        self.net.eval()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n, desc=progress, unit="img", disable=None, leave=False, dynamic_ncols=True)
        with strict_fp32():
            for chunk in chunks:
                for key, value in self.net(chunk.to(device)).items():  # features; logits when it classifies
                    if keys is None or key in keys:
                        if key not in out:
                            out[key] = torch.empty((n, *value.shape[1:]), dtype=torch.float64)
                        out[key][done : done + len(chunk)] = value.double().cpu()
                done += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        if bar is not None:
            bar.close()
        if done != n:
            raise EncoderError(f"the images gave {done} of {n} images to the encoder")
        return out


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


def domain_encoder(name: str, dataset: Dataset, recipe: DomainConfig, cache_dir: Path, device) -> Encoder:
    """The dataset's `domain` classifier: loaded from the cache or trained with the fixed recipe, then checked."""
    spec = {"version": DOMAIN_VERSION, "dataset_digest": dataset.digest, "recipe": dataclasses.asdict(recipe)}
    spec["recipe"].pop("min_test_accuracy")  # a gate, not part of what is trained
    path = Path(cache_dir) / f"domain-{dataset.name}-{json_digest(spec)}.pt"
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(recipe.seed)
        net = DomainNet(dataset.image_shape, dataset.num_classes, recipe.feature_dim)

    def trained() -> dict:
        accuracy = _train_domain(net, dataset, recipe, device)
        return {"state_dict": {k: v.cpu() for k, v in net.state_dict().items()}, "test_accuracy": accuracy}

    saved, _ = cached(path, spec, trained)
    net.load_state_dict(saved["state_dict"])
    accuracy = saved["test_accuracy"]
    floor = recipe.floor(dataset.name)
    if accuracy < floor:
        raise EncoderError(
            f"the domain classifier for {dataset.name} reaches {accuracy:.3f} test accuracy, below the floor "
            f"{floor} ([features.domain] min_test_accuracy); its features would not be trusted. "
            f"Raise [features.domain] steps or check the dataset"
        )
    net.to(device).eval()
    return Encoder(
        name,
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


def weights_path(name: str) -> Path | None:
    """The weights file encoder `name` loads (schema.ENCODERS: None for `domain`, which the suite trains): the file
    named by its environment variable, else the file in torch's hub cache (where torch-fidelity's and torch.hub's own
    downloads put it), else a download into that cache (not when BENCH_OFFLINE=1). Cheap: no network is built.
    EncoderError naming every way to provide the weights when there are none."""
    info = ENCODERS[name]
    w = info.weights
    if w is None:
        return None
    hub = Path(torch.hub.get_dir()) / "checkpoints" / w.file
    env = os.environ.get(w.env)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise EncoderError(
                f"{w.env}={env} is not a file; point it at {w.file}, or unset it to use torch's hub cache ({hub})"
            )
        return path
    if hub.is_file():
        return hub
    if os.environ.get("BENCH_OFFLINE") == "1":
        why = "BENCH_OFFLINE=1 is set, so no download was tried"
    else:
        try:
            hub.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(w.url, str(hub), hash_prefix=w.hash_prefix, progress=True)
            return hub
        except (OSError, urllib.error.URLError, RuntimeError) as e:  # no network, HTTP error, hash mismatch
            hub.unlink(missing_ok=True)
            why = f"the download from {w.url} failed ({type(e).__name__}: {e})"
    otherwise = (
        "use the domain encoder: --set eval.encoder=domain"
        if info.kind == "inception"
        else f"drop {name!r} from eval.extra_encoders"
    )
    raise EncoderError(
        f"the {name} encoder needs {w.what} ({w.file}) and found none: {w.env} is not set, they are not in "
        f"torch's hub cache ({hub}), and {why}. Set {w.env}=/path/to/{w.file}, copy the file into {hub.parent}, "
        f"run once with network access, or {otherwise}"
    )


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


def inception_encoder(name: str, dataset: Dataset, recipe: DomainConfig, cache_dir: Path, device) -> Encoder:
    """The standard encoder; the same network for every dataset (the arguments keep one builder signature)."""
    weights = weights_path(name)
    try:
        net = InceptionNet(weights)
    except Exception as e:  # a truncated or foreign file: torch.load / load_state_dict errors
        raise EncoderError(
            f"cannot load Inception weights from {weights} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"it must be torch-fidelity's {ENCODERS[name].weights.file}"
        ) from e
    return Encoder(
        name,
        file_digest(weights),
        "uint8; grayscale repeated to 3 channels; (x-128)/128 in fp32 (torch-fidelity inception-v3-compat)",
        net.to(device).eval(),
        {"weights": str(weights)},
        resize="bilinear to 299x299, TF1-compatible (torch-fidelity interpolate_bilinear_2d_like_tensorflow1x)",
        feature_dim=2048,
    )


# DINOv2 (Oquab et al. 2023) as Stein et al. 2023 use it for FD_DINOv2 (dgm-eval's default encoder: ViT-L/14),
# built by timm; the weights are Meta's released checkpoints (or timm's conversion of them).
DINOV2_SIZE = 224
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


POS_EMBED_OFFSET = 0.1  # Meta's DINOv2: the scale factor of the positional-embedding interpolation is (g + 0.1) / M


def meta_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """DINOv2's positional embeddings (1, 1 + M², d), released for an M×M patch grid (37×37 at 518 pixels), for a
    grid×grid one as Meta's hub model interpolates them at run time (facebookresearch/dinov2,
    `interpolate_pos_encoding`, the model dgm-eval loads): bicubic, no antialiasing, scale factor (grid + 0.1) / M
    rather than an output size, in float32. timm resamples them once, antialiased, at the exact size: other values."""
    cls, patches = pos_embed[:, :1].float(), pos_embed[:, 1:].float()
    m, dim = math.isqrt(patches.shape[1]), patches.shape[2]
    if m * m != patches.shape[1]:
        raise ValueError(f"positional embeddings for {patches.shape[1]} patches are not a square grid")
    if m == grid:
        return pos_embed.float()
    scale = (grid + POS_EMBED_OFFSET) / m
    grid_embed = F.interpolate(
        patches.reshape(1, m, m, dim).permute(0, 3, 1, 2), scale_factor=(scale, scale), mode="bicubic", antialias=False
    )
    if grid_embed.shape[-2:] != (grid, grid):
        raise ValueError(f"interpolated positional embeddings have grid {tuple(grid_embed.shape[-2:])}, not {grid}")
    return torch.cat([cls, grid_embed.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)], dim=1)


def dgm_eval_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) → float (N, 3, 224, 224) exactly as dgm-eval feeds DINOv2 (Stein et al. 2023): each image a
    PIL image converted to RGB, torchvision's Resize((224, 224), BICUBIC) on it (PIL's bicubic kernel, a = −0.5,
    output rounded to 8 bits), ToTensor (/255), ImageNet normalisation."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    out = torch.empty(len(images), 3, DINOV2_SIZE, DINOV2_SIZE)
    arrays = images.permute(0, 2, 3, 1).cpu().numpy()
    for i, array in enumerate(arrays):
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).convert("RGB")
        image = TF.resize(image, [DINOV2_SIZE, DINOV2_SIZE], InterpolationMode.BICUBIC)
        out[i] = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
    return TF.normalize(out / 255.0, IMAGENET_MEAN, IMAGENET_STD)


class DinoV2Net(nn.Module):
    """uint8 images → the CLS embedding of DINOv2 after its final norm (the features of FD_DINOv2), through
    dgm-eval's pipeline (`dgm_eval_pixels`) and Meta's positional embeddings at 224×224 (`meta_pos_embed`), fp32."""

    def __init__(self, name: str, weights: Path):
        super().__init__()
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn

        self.vit = timm.create_model(ENCODERS[name].arch, pretrained=False, num_classes=0, img_size=DINOV2_SIZE)
        if weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(weights))
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        # Meta's checkpoints carry a mask token (dropped by timm's filter) and positional embeddings for 518×518,
        # brought to the 16×16 patch grid of a 224×224 input as Meta's model does it on every forward pass
        grid = DINOV2_SIZE // self.vit.patch_embed.patch_size[0]
        state = {**state, "pos_embed": meta_pos_embed(state["pos_embed"], grid)}
        self.vit.load_state_dict(checkpoint_filter_fn(state, self.vit), strict=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        device = next(self.vit.parameters()).device
        return {"features": self.vit(dgm_eval_pixels(x).to(device))}


def dinov2_encoder(name: str, dataset: Dataset, recipe: DomainConfig, cache_dir: Path, device) -> Encoder:
    weights = weights_path(name)
    try:
        net = DinoV2Net(name, weights)
    except Exception as e:  # a truncated file, or another architecture's weights
        raise EncoderError(
            f"cannot load {name} weights from {weights} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); it "
            f"must be Meta's {ENCODERS[name].weights.file} (or timm's conversion of it)"
        ) from e
    from importlib.metadata import version

    return Encoder(
        name,
        file_digest(weights),
        f"dgm-eval's pipeline (Stein et al. 2023): PIL image converted to RGB, resized, rounded to 8 bits, /255, "
        f"ImageNet mean/std; Meta's positional-embedding interpolation (bicubic, scale (16 + 0.1)/37, no "
        f"antialias); fp32; CLS token after the final norm (timm {version('timm')} {ENCODERS[name].arch})",
        net.to(device).eval(),
        {"weights": str(weights)},
        resize=f"bicubic (PIL via torchvision Resize, a = -0.5, uint8 output) to {DINOV2_SIZE}x{DINOV2_SIZE}",
        feature_dim=net.vit.num_features,
    )


BUILDERS: dict[str, Callable[..., Encoder]] = {  # schema.ENCODERS[name].kind → the function that builds it
    "domain": domain_encoder,
    "inception": inception_encoder,
    "dinov2": dinov2_encoder,
}


def build_encoder(name: str, dataset: Dataset, recipe: DomainConfig, cache_dir: Path, device) -> Encoder:
    if name not in ENCODERS:
        raise EncoderError(f"unknown feature encoder {name!r}; known encoders: {', '.join(ENCODERS)}")
    return BUILDERS[ENCODERS[name].kind](name, dataset, recipe, cache_dir, device)

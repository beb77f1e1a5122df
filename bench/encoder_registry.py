"""The feature encoders genbench knows, by the name a suite gives them (eval.encoder, eval.extra_encoders): which
builder makes each, where its weights come from, what the leaderboard says of it. Part of bench.schema, which
re-exports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Weights:
    """Where a pretrained encoder's weights come from: $env, else `file` in torch's hub cache, else `url`."""

    what: str  # what the weights are, in words
    file: str
    env: str
    url: str
    hash_prefix: str | None = None  # torch.hub convention: the file's sha256 starts with it


@dataclass(frozen=True)
class EncoderInfo:
    """One feature encoder: which builder makes it (bench.eval.encoders.BUILDERS), its weights, what the
    leaderboard says of it."""

    kind: str  # domain | inception | dinov2
    note: str
    weights: Weights | None = None  # None: trained by the suite on the dataset's labels (domain)
    arch: str = ""  # the timm architecture of a DINOv2 encoder


# torch-fidelity's Inception-v3 for FID (converted from the TF graph of Heusel et al.'s TTUR code); its URL is
# torch-fidelity's URL_INCEPTION_V3 (a test compares: importing torch-fidelity here would cost seconds)
INCEPTION_WEIGHTS = Weights(
    "torch-fidelity's Inception-v3 weights",
    "weights-inception-2015-12-05-6726825d.pth",
    "BENCH_INCEPTION_WEIGHTS",
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    "6726825d",
)


def _dinov2(short: str) -> Weights:
    """Meta's released DINOv2 checkpoint (timm's conversion of it loads too)."""
    file = f"dinov2_{short}_pretrain.pth"
    url = f"https://dl.fbaipublicfiles.com/dinov2/dinov2_{short}/{file}"
    return Weights("DINOv2 weights (Meta's checkpoint, or timm's conversion of it)", file, "BENCH_DINOV2_WEIGHTS", url)


# The feature encoders, by the name a suite gives (eval.encoder, eval.extra_encoders): config validation, the
# weights lookup, the metric names (fid_<name>), the builders and the report's notes all derive from this table.
ENCODERS: dict[str, EncoderInfo] = {
    "domain": EncoderInfo(
        "domain",
        "`domain`: a small CNN trained on this dataset's labels (bench.toml [features.domain]); fast and sensitive "
        "to this dataset's classes, comparable with no published number",
    ),
    "inception": EncoderInfo(
        "inception",
        "`inception`: the TF-FID Inception-v3 (torch-fidelity inception-v3-compat, 2048-d pool features, 299×299 TF1 "
        "bilinear resize): the protocol of Heusel et al. 2017 and of most published FIDs",
        INCEPTION_WEIGHTS,
    ),
    "dinov2": EncoderInfo(
        "dinov2",
        "`dinov2`: DINOv2 ViT-L/14's CLS embedding at 224×224 (timm): FD_DINOv2 of Stein et al. 2023 (dgm-eval's "
        "default encoder), which tracks human judgement better than Inception",
        _dinov2("vitl14"),
        "vit_large_patch14_dinov2",
    ),
    "dinov2-vitb14": EncoderInfo(
        "dinov2",
        "`dinov2-vitb14`: DINOv2 ViT-B/14, a cheaper variant of FD_DINOv2 (not the published one)",
        _dinov2("vitb14"),
        "vit_base_patch14_dinov2",
    ),
    "dinov2-vits14": EncoderInfo(
        "dinov2",
        "`dinov2-vits14`: DINOv2 ViT-S/14, the cheapest variant (not the published FD_DINOv2)",
        _dinov2("vits14"),
        "vit_small_patch14_dinov2",
    ),
}

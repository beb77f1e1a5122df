"""The tracking layout in one place: the MLflow tag names, metric keys and artifact paths genbench writes and reads.

Torch-free and dependency-free, so the producers (runner, cell, metrics, likelihood, ais), the store
(tracking) and the readers (report, the UI) all import the same names. A new leaderboard metric is one `Metric` in
`LEADERBOARD`: its key, its column label, its direction and its decimals.
"""

from __future__ import annotations

from dataclasses import dataclass

# ------------------------------------------------------------------------------------------------------- tags

TAG_PREFIX = "bench."
SUITE = "bench.suite"
PARENT = "bench.parent"  # "true" on the run that groups one `bench run`
MODEL = "bench.model"
FAMILY = "bench.family"  # gan | vae | real
OBSERVATION = (
    "bench.observation"  # the dataset's likelihood convention: bernoulli (binary pixels) | discretized-logistic
)
DATASET = "bench.dataset"
SEED = "bench.seed"
CELL = "bench.cell"  # the cell's key: model, dataset, seed, configuration, data digest, protocol library versions
VARIANT = "bench.variant"  # the key without the seed: the seeds of one variant form a leaderboard row
PROTOCOL = "bench.protocol"  # the evaluation protocol's fingerprint: one leaderboard section per value
ERROR = "bench.error"
EXECUTOR = "bench.executor"
HOST, PID = "bench.host", "bench.pid"  # the process that owns a RUNNING run (orphans are detected by them)
RESUMES = "bench.resumes"  # how often a cell's run was resumed after an interruption
RESUMED_FROM = "bench.resumed_from_step"
PERF = "bench.perf"

REAL_MODEL = "real-data"  # the bench.model of the real-vs-real reference row

# ---------------------------------------------------------------------------------------------------- metrics

FID = "fid"
FID_INF = "fid_inf"  # FID extrapolated to infinitely many samples (bench.metrics.fid_infinity)
IS_MEAN, IS_STD = "is_mean", "is_std"
KID_MEAN, KID_STD = "kid_mean", "kid_std"
PRECISION, RECALL = "precision", "recall"
DENSITY, COVERAGE = "density", "coverage"  # Naeem et al. 2020
COPYING = "copying_ct"  # Meehan et al. 2020's C_T: ≪ 0 (below −3) flags data copying
FID_MATCHED = "fid_matched"  # FID of the models at the real-data row's N, when the held-out split is smaller than N
SAMPLE_COUNT_FREE = (
    FID_INF,
    KID_MEAN,
    FID_MATCHED,
)  # comparable across sample counts: the real row shows them at any N
ENCODER_METRICS = (
    "fid",
    "fid_inf",
    "kid_mean",
    "kid_std",
    "is_mean",
    "is_std",
    "precision",
    "recall",
    "density",
    "coverage",
    "copying_ct",
    "fid_matched",
)  # what each encoder computes from the same samples
ENCODERS = ("inception", "dinov2", "dinov2-vitb14", "dinov2-vits14", "domain")  # bench.config.EXTRACTORS


def encoder_suffix(encoder: str) -> str:
    return encoder.replace("-", "_")


def encoder_key(metric: str, encoder: str = "") -> str:
    """A sample metric's name in an encoder's features: plain for the suite's first encoder (so earlier runs stay
    comparable), `<metric>_<encoder>` for the others (fid_dinov2, precision_dinov2_vits14)."""
    return f"{metric}_{encoder_suffix(encoder)}" if encoder and metric in ENCODER_METRICS else metric


def base_metric(key: str) -> str:
    """The metric of an encoder-suffixed key (fid_dinov2 → fid); the key itself otherwise."""
    for enc in ENCODERS:
        suffix = f"_{encoder_suffix(enc)}"
        if key.endswith(suffix) and key[: -len(suffix)] in ENCODER_METRICS:
            return key[: -len(suffix)]
    return key


GENERATED_IMAGES = "eval/generated_images"  # images scored as samples (the real-data row: held-out images)
REFERENCE_IMAGES = "eval/reference_images"  # images of the reference split they are compared with
MATCHED_IMAGES = "eval/matched_images"  # the N of fid_matched (the real-data row's N)
ELBO, NLL_IWAE, BITS_PER_DIM, RATE, DISTORTION = "elbo", "nll_iwae", "bits_per_dim", "rate", "distortion"
RECON_PSNR, RECON_SSIM = "recon_psnr", "recon_ssim"
NLL_AIS, BITS_PER_DIM_AIS = "nll_ais", "bits_per_dim_ais"
AIS_SIGMA, AIS_BDMC_GAP = "ais/sigma", "ais/bdmc_gap"
BEST_PREFIX = "best/"  # best/<metric>: the full evaluation of the checkpoint selected on periodic FID
BEST_STEP = "best/step"
# how the best checkpoint is chosen; part of the cell key, so cells selected under an earlier rule are re-run
SELECTION_RULE = (
    "lowest periodic FID (domain features, train.eval_samples samples from latent seed eval.seed + "
    "SELECTION_SEED_OFFSET) against the held-out split, disjoint from the reference split the reported numbers use"
)
SELECTION_SEED_OFFSET = 7919  # the selection's latents are not the scored ones
CHECKPOINTS = {  # which metrics a leaderboard reports
    "final": "the final checkpoint (the last training step)",
    "best": "the best checkpoint, selected on periodic FID (its own latents, against the held-out split, so the "
    "reported evaluation did not choose it; best/<metric> in MLflow, the rule in protocol.json)",
}

# a cell's timings and throughput
TRAIN_S, EVAL_S, EVAL_BEST_S = "time/train_s", "time/eval_s", "time/eval_best_s"
EVAL_REFERENCE_S, TRACKING_S = "time/eval_reference_s", "time/tracking_s"
TRAIN_IMAGES_PER_S = "throughput/train_images_per_s"
# where an evaluation's time/eval_s goes (AIS logs its own: time/ais_select_s, time/ais_s)
EVAL_GENERATE_S, EVAL_FEATURES_S = "time/eval_generate_s", "time/eval_features_s"  # samples; every encoder's features
EVAL_SAMPLE_METRICS_S = "time/eval_sample_metrics_s"  # FID, KID, IS, P/R, D/C, FID∞, C_T, nearest images
EVAL_LIKELIHOOD_S = "time/eval_likelihood_s"  # the VAEs' ELBO/IWAE bound and reconstruction quality


@dataclass(frozen=True)
class Metric:
    key: str
    label: str  # the leaderboard's column header
    higher_is_better: bool | None  # None: descriptive (rate, distortion, σ), never marked best
    decimals: int


LEADERBOARD: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric(FID, "FID ↓", False, 2),
        Metric(FID_INF, "FID∞ ↓", False, 2),
        Metric(FID_MATCHED, "FID at the real row's N ↓", False, 2),  # the report names the N in the header
        Metric(KID_MEAN, "KID ↓", False, 4),
        Metric(IS_MEAN, "IS ↑", True, 2),
        Metric(PRECISION, "precision ↑", True, 3),
        Metric(RECALL, "recall ↑", True, 3),
        Metric(DENSITY, "density", None, 3),  # ≈ 1 when the distributions match: no direction
        Metric(COVERAGE, "coverage ↑", True, 3),
        Metric(COPYING, "copying C_T", None, 2),  # ≪ 0 (< −3) flags copying, ≈ 0 none, > 0 underfitting
        Metric(ELBO, "ELBO ↑", True, 2),
        Metric(NLL_IWAE, "NLL (IWAE) ↓", False, 2),
        Metric(BITS_PER_DIM, "bits/dim ↓", False, 4),
        Metric(RECON_PSNR, "recon PSNR ↑", True, 2),
        Metric(RECON_SSIM, "recon SSIM ↑", True, 3),
        Metric(RATE, "rate (KL)", None, 2),
        Metric(DISTORTION, "distortion", None, 2),
        Metric(NLL_AIS, "NLL (AIS) ↓", False, 1),
        Metric(BITS_PER_DIM_AIS, "bits/dim (AIS) ↓", False, 3),
        Metric(AIS_SIGMA, "AIS σ", None, 3),
        Metric(AIS_BDMC_GAP, "BDMC gap", None, 1),
    )
}

_ARROWS = {True: " ↑", False: " ↓", None: ""}
_ENCODER_LABELS = {
    "fid": "FD",
    "fid_inf": "FD∞",
    "kid_mean": "KID",
    "precision": "precision",
    "recall": "recall",
    "density": "density",
    "coverage": "coverage",
    "copying_ct": "copying C_T",
}
LEADERBOARD.update(  # the same metrics in each extra encoder's features: labelled columns, e.g. "FD ↓ [dinov2]"
    {
        encoder_key(m, enc): Metric(
            encoder_key(m, enc),
            f"{label}{_ARROWS[LEADERBOARD[m].higher_is_better]} [{enc}]",
            LEADERBOARD[m].higher_is_better,
            LEADERBOARD[m].decimals,
        )
        for enc in ENCODERS
        for m, label in _ENCODER_LABELS.items()
    }
)

# the metrics a cell prints when it finishes
SHOWN = (FID, IS_MEAN, ELBO, NLL_IWAE, NLL_AIS, AIS_BDMC_GAP)

# -------------------------------------------------------------------------------------------------- artifacts

CONFIG_ARTIFACT = "config.toml"  # the cell's whole configuration
ENVIRONMENT_ARTIFACT = "environment.json"
PROTOCOL_ARTIFACT = "protocol.json"  # the evaluation protocol behind bench.protocol
AIS_ARTIFACT = "ais.json"
ERROR_ARTIFACT = "error.txt"
SAMPLES_FINAL = "samples/final.png"
SAMPLES_BEST = "samples/best.png"
NEAREST_TRAIN = "samples/nearest_train.png"  # 8 samples, each beside its 3 nearest training images (first encoder)
SAMPLES_BY_STEP = "samples"  # MLflow's image view: images/samples+step+N+... with a slider over the steps
RECONSTRUCTIONS = "reconstructions.png"
CHECKPOINTS_DIR = "checkpoints"  # final.pt and best.pt
MODEL_FINAL, MODEL_BEST = "model/final", "model/best"  # MLflow PyTorch models: runs:/<run id>/model/final

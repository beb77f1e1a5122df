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
PROTOCOL_VERSION_TAG = "bench.protocol_version"  # the PROTOCOL_VERSION a run was evaluated under

# What is computed, and how, changes with this number (bench.eval.protocol). It is in every protocol fingerprint,
# every cell key and every run's tags: results of an earlier version are re-run, never mixed with the current ones.
PROTOCOL_VERSION = 3
ERROR = "bench.error"
AIS_CHECK = "bench.ais_check"  # a VAE's AIS under its own observation model against its IWAE bound: ok | violated: …
EXECUTOR = "bench.executor"
HOST, PID = "bench.host", "bench.pid"  # the process that owns a RUNNING run (orphans are detected by them)
PROCESS_SPACE = "bench.process_space"  # the boot and pid namespace its PID is valid in (containers share hostnames)
# a cell's lease: the process training it writes the time (unix seconds) every HEARTBEAT_S; a RUNNING run whose
# beat another `bench run` has watched unchanged for LEASE_S of its own time has lost its holder (a dead node), and
# that `bench run` may take the cell over (bench.tracking.lease: Watch, Lease)
HEARTBEAT = "bench.heartbeat"
HEARTBEAT_S, LEASE_S = 15.0, 90.0
ATTEMPT = "bench.attempt"  # the dispatch a worker or Ray task runs; seen again on a run: a retry (a resume)


HOLDER = "bench.holder"  # the random id of the process that claimed the cell's run last: the lease's fence
RESUME_ARTIFACT = "resume/last.pt"  # the newest resumable checkpoint, where every node can reach it (remote stores)
RESUME_BEST_ARTIFACT = "resume/best.pt"  # beside it, the best checkpoint so far: a resume elsewhere keeps it
# of each, the sha256 (a download is checked against it) and the step of last.pt (the newest copy wins)
RESUME_SHA256, RESUME_BEST_SHA256, RESUME_STEP = "bench.resume_sha256", "bench.resume_best_sha256", "bench.resume_step"
RESUMES = "bench.resumes"  # how often a cell's run was resumed after an interruption
RESUMED_FROM = "bench.resumed_from_step"
PERF = "bench.perf"

REAL_MODEL = "real-data"  # the bench.model of the real-data row (held-out real images scored as samples)

# ---------------------------------------------------------------------------------------------------- metrics

FID = "fid"
FID_INF = "fid_inf"  # FID extrapolated to infinitely many samples (bench.metrics.fid_infinity)
FID_INF_SE = "fid_inf_se"  # the standard error of that intercept over the fit's subset draws
FID_INF_REAL_MIN_RATIO = 10  # the real-data row's FID∞ only where its N is at least this many feature dimensions
IS_MEAN, IS_STD = "is_mean", "is_std"
KID_MEAN, KID_STD = "kid_mean", "kid_std"
PRECISION, RECALL = "precision", "recall"
DENSITY, COVERAGE = "density", "coverage"  # Naeem et al. 2020
COPYING = "copying_ct"  # Meehan et al. 2020's C_T: ≪ 0 (below −3) flags data copying
# what C_T stood on (first encoder): the cells with enough samples, their share of the test images, m = n
COPYING_CELLS, COPYING_TEST_SHARE, COPYING_SAMPLES = "copying/cells", "copying/test_share", "copying/samples"
FID_MATCHED = "fid_matched"  # FID of the models at the real-data row's N, when the held-out split is smaller than N
SAMPLE_COUNT_FREE = (
    FID_INF,
    FID_INF_SE,
    KID_MEAN,
    FID_MATCHED,
)  # comparable across sample counts: the real row shows them at any N
ENCODER_METRICS = (
    FID,
    FID_INF,
    FID_INF_SE,
    KID_MEAN,
    KID_STD,
    IS_MEAN,
    IS_STD,
    PRECISION,
    RECALL,
    DENSITY,
    COVERAGE,
    COPYING,
    FID_MATCHED,
)  # what each encoder computes from the same samples


# the feature encoders' table (bench.encoder_registry), part of this schema
from bench.encoder_registry import ENCODERS, INCEPTION_WEIGHTS, EncoderInfo, Weights  # noqa: E402, F401

SELECTION_ENCODER = "domain"  # the periodic FID that selects the best checkpoint is computed in its features


def encoder_suffix(encoder: str) -> str:
    return encoder.replace("-", "_")


def encoder_key(metric: str, encoder: str = "") -> str:
    """A sample metric's name in an encoder's features: plain for the suite's first encoder (`fid`: the number a
    table ranks by), `<metric>_<encoder>` for the others (fid_dinov2, precision_dinov2_vits14)."""
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
    "SELECTION_SEED_OFFSET) against the validation split: eval.validation_images training images carved out "
    "(seeded), on which no model trains and no reported number is scored"
)
SELECTION_SEED_OFFSET = 7919  # the selection's latents are not the scored ones
CHECKPOINTS = {  # which metrics a leaderboard reports
    "final": "the final checkpoint (the last training step)",
    "best": "the best checkpoint, selected on periodic FID (its own latents, against the held-out split, so the "
    "reported evaluation did not choose it; best/<metric> in MLflow, the rule in protocol.json)",
}


def seconds(s: float) -> str:
    """A duration as the run summary and the report show it: whole seconds from 10 s, tenths below."""
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"


# during training (bench.run.train): each model's own losses, and the cheap periodic FID that selects the best step
TRAIN_PREFIX = "train/"  # train/<loss>: the names a model's train_step returns
PERIODIC_FID, PERIODIC_BEST_FID = "periodic/fid", "periodic/best_fid"
PERIODIC_TRAIN_S = "periodic/train_s"  # training seconds at each periodic FID: curves over wall-clock
BEST_PERIODIC_FID = "best/periodic_fid"  # the periodic FID at the best step
SYSTEM_PREFIX = "system/"  # MLflow's system-metrics monitor (CPU, memory, GPU)

# evaluation bookkeeping
REFERENCE_CACHED = "eval/reference_cached"  # 1 when the reference features came from the cache
ENCODER_ACCURACY = "encoder/test_accuracy"  # the domain encoder's test accuracy (NaN for pretrained encoders)

# AIS (bench.eval.decoder_ais) beside its leaderboard metrics
AIS_NLL_STDERR, AIS_ACCEPT = "ais/nll_stderr", "ais/accept"
AIS_GRADIENT_EVALS = "ais/gradient_evals_per_chain"
AIS_VALIDATION_NLL = "ais/validation_nll"  # the σ search's score at the chosen σ
AIS_BDMC_LOWER, AIS_BDMC_UPPER = "ais/bdmc_lower", "ais/bdmc_upper"
AIS_SELECT_S, AIS_S, AIS_BDMC_S = "time/ais_select_s", "time/ais_s", "time/ais_bdmc_s"
# a VAE's AIS under its own observation model, beside its IWAE bound on the same images (the estimators' check)
AIS_OWN_NLL, AIS_OWN_IWAE_NLL = "ais_own/nll", "ais_own/iwae_nll"
AIS_OWN_GAP, AIS_OWN_GAP_STDERR = "ais_own/gap", "ais_own/gap_stderr"  # mean AIS log p̂ − IWAE bound, ≥ 0 expected
AIS_OWN_S = "time/ais_own_s"

# `bench sweep` (bench.run.sweep): its trials and the retrained winners live in the experiment SWEEP_EXPERIMENT
SWEEP = "bench.sweep"  # the suite a sweep run belongs to, on the sweep's parent, its trials and its retrained cells
SWEEP_ROLE = "bench.sweep_role"  # trial | retrain
TRIAL = "bench.trial"  # a trial's number, 0 … trials − 1 (its place in the seeded sampler's sequence)
SEARCH_PARAM_PREFIX = "search."  # search.<hyperparameter>: the sampled values, as params of each trial
SWEEP_SCORE = "sweep/val_fid"  # a trial's score: FID of its final model against the validation split
SWEEP_ARTIFACT = "sweep.json"  # on the sweep's parent run: search spaces, sampled configurations, winners
# how a trial is scored; part of a trial's key (a changed rule re-runs the trials)
SWEEP_SCORE_RULE = (
    "FID of the final model, domain features, train.eval_samples samples from latent seed eval.seed + "
    "SELECTION_SEED_OFFSET, against the validation split (eval.validation_images training images carved out, "
    "seeded): disjoint from every image the retrained models' reported numbers are scored on"
)


def sweep_experiment(suite: str) -> str:
    """The MLflow experiment of a suite's sweep: its trials and retrained winners, apart from the suite's own runs."""
    return f"{suite}-sweep"


# the suite's parent run
CELLS_FINISHED, CELLS_SKIPPED, CELLS_FAILED = "cells/finished", "cells/skipped", "cells/failed"
SUITE_WALL_S, SUITE_CELLS_RUN = "suite/wall_s", "suite/cells_run"
SUITE_CELLS_PER_HOUR, SUITE_TRAIN_IMAGES_PER_S = "suite/cells_per_hour", "suite/train_images_per_s"

# a cell's timings and throughput
TRAIN_S, EVAL_S, EVAL_BEST_S = "time/train_s", "time/eval_s", "time/eval_best_s"
EVAL_REFERENCE_S, TRACKING_S = "time/eval_reference_s", "time/tracking_s"
TRAIN_IMAGES_PER_S = "throughput/train_images_per_s"
# where an evaluation's time/eval_s goes (AIS logs its own: AIS_SELECT_S, AIS_S, AIS_BDMC_S)
EVAL_GENERATE_S, EVAL_FEATURES_S = "time/eval_generate_s", "time/eval_features_s"  # samples; every encoder's features
EVAL_SAMPLE_METRICS_S = "time/eval_sample_metrics_s"  # FID, KID, IS, P/R, D/C, FID∞, C_T, nearest images
EVAL_LIKELIHOOD_S = "time/eval_likelihood_s"  # the VAEs' ELBO/IWAE bound and reconstruction quality


# What a cell costs, as the run summary, the report and the dry-run estimate split it: each part is the sum of these
# timings (a timing a run lacks counts 0); AIS lies within the evaluation.
COST = {
    "training": (TRAIN_S,),
    "evaluation": (EVAL_S, EVAL_BEST_S),
    "AIS": (AIS_SELECT_S, AIS_S, AIS_BDMC_S, AIS_OWN_S),
}


def cost_text(spent: dict[str, float]) -> str:
    """`spent` (seconds per part of COST) in words: "training 37 s, evaluation 23 s (of which AIS 21 s)"."""
    return (
        f"training {seconds(spent['training'])}, evaluation {seconds(spent['evaluation'])} "
        f"(of which AIS {seconds(spent['AIS'])})"
    )


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
        Metric(FID_INF_SE, "FID∞ fit SE", None, 2),  # the intercept's standard error (subset draws), per seed
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
        # AIS of GANs and VAEs alike: a code length of 8-bit images under a discretised Gaussian around the decoder
        Metric(NLL_AIS, "8-bit code length (AIS, discretised Gaussian), nats ↓", False, 1),
        Metric(BITS_PER_DIM_AIS, "bits per 8-bit pixel (AIS) ↓", False, 3),
        Metric(AIS_SIGMA, "AIS σ", None, 3),
        Metric(AIS_BDMC_GAP, "BDMC gap", None, 1),
        Metric(AIS_OWN_GAP, "VAE check: AIS − IWAE (own model), nats", None, 2),  # ≥ 0 expected; run-time check
    )
}

_ARROWS = {True: " ↑", False: " ↓", None: ""}
_ENCODER_LABELS = {
    "fid": "FD",
    "fid_inf": "FD∞",
    "fid_inf_se": "FD∞ fit SE",
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

# what only the likelihood part of an evaluation logs (the VAEs' bound, AIS): the best checkpoint has none of them
# unless eval.best_metrics = "all"
LIKELIHOOD_METRICS = (
    ELBO,
    RATE,
    DISTORTION,
    NLL_IWAE,
    BITS_PER_DIM,
    RECON_PSNR,
    RECON_SSIM,
    NLL_AIS,
    BITS_PER_DIM_AIS,
    AIS_SIGMA,
    AIS_BDMC_GAP,
    AIS_NLL_STDERR,
    AIS_ACCEPT,
    AIS_GRADIENT_EVALS,
    AIS_VALIDATION_NLL,
    AIS_BDMC_LOWER,
    AIS_BDMC_UPPER,
    AIS_SELECT_S,
    AIS_S,
    AIS_BDMC_S,
    AIS_OWN_NLL,
    AIS_OWN_IWAE_NLL,
    AIS_OWN_GAP,
    AIS_OWN_GAP_STDERR,
    AIS_OWN_S,
    EVAL_LIKELIHOOD_S,
)

# the metrics a cell prints when it finishes
SHOWN = (FID, IS_MEAN, ELBO, NLL_IWAE, NLL_AIS, AIS_BDMC_GAP, SWEEP_SCORE)

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
REPORT_DIR = "report"  # the leaderboard's files, attached to the suite's latest parent run by `bench report`
# the final and best models: MLflow 3 LoggedModels of the cell's run (the experiment's Models tab), named
# <model>-<dataset>-seed<seed>-final and -best, loadable as models:/<model id> (the id in the run's tags below) or
# runs:/<run id>/<that name>
MODEL_FINAL, MODEL_BEST = "final", "best"
CHECKPOINT = (
    "bench.checkpoint"  # a LoggedModel's checkpoint (final or best); its name is <model>-<dataset>-seed<seed>-<it>
)
MODEL_ID_FINAL, MODEL_ID_BEST = "bench.model_id.final", "bench.model_id.best"
MODEL_IDS = {MODEL_FINAL: MODEL_ID_FINAL, MODEL_BEST: MODEL_ID_BEST}
MODEL_TYPE = "genbench"  # the LoggedModels' model_type: search_logged_models(filter_string="model_type = 'genbench'")
LEGACY_MODEL_DIR = "model"  # runs logged before LoggedModels hold their models as run artifacts model/final, model/best

"""The evaluation protocol: everything that changes an evaluation's numbers, written down as a dict (`protocol.json`)
whose fingerprint (tag `bench.protocol`) decides which numbers may share a leaderboard table.

schema.PROTOCOL_VERSION counts changes of the protocol itself (what is computed, and how). It is part of every
fingerprint and every cell key, so results of an earlier version are re-run, never mixed with the current ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from importlib.metadata import version

import torch

from bench.config import EvalConfig, TrainConfig
from bench.data import VALIDATION_SEED, Dataset
from bench.eval.copying import COPYING_MIN_SAMPLES
from bench.eval.likelihood import observe_test
from bench.eval.metrics import FID_INF_MIN_FRACTION, FID_INF_POINTS
from bench.schema import (
    GENERATED_IMAGES,
    MATCHED_IMAGES,
    PROTOCOL_VERSION,
    REFERENCE_IMAGES,
    SELECTION_ENCODER,
    SELECTION_RULE,
    SELECTION_SEED_OFFSET,
    encoder_suffix,
)
from bench.storage import json_digest

# The libraries whose versions are part of the protocol and of every cell's key. They are pinned exactly in
# pyproject.toml: a checkout has one set, and a pin bump re-runs the cells instead of mixing old and new numbers.
PROTOCOL_LIBRARIES = ("torch", "torch-fidelity", "torchmetrics")

SELECTION_KEY = "best_checkpoint_selection"  # in protocol.json, not in the fingerprint


def library_versions() -> dict[str, str]:
    return {name: version(name) for name in PROTOCOL_LIBRARIES}


def protocol(cfg: EvalConfig, dataset: Dataset, real: Sequence, device, observed=None) -> dict:
    """Everything that changes an evaluation's numbers (docs/protocol.md), for samples scored in the encoders
    of `real` (bench.eval.real_features.RealFeatures, the first encoder first). `observed`: the VAEs' test images as
    the likelihood saw them; GANs and the real-data row get the same digest computed here, so they share the
    fingerprint of the VAEs they are compared with."""
    if observed is None:
        observed = observe_test(dataset.test_images[: cfg.likelihood_images or None], dataset.observation, cfg.seed)
    first = real[0]
    n_reference = len(dataset.split(cfg.reference_split)[0])
    proto = {
        "version": PROTOCOL_VERSION,
        "encoder": first.encoder.name,
        "encoder_weights_digest": first.encoder.weights_digest,
        "preprocessing": first.encoder.preprocessing,
        "resize": first.encoder.resize,
        "reference": {
            "dataset": dataset.name,
            "dataset_digest": dataset.digest,
            "split": cfg.reference_split,
            "features_digest": first.reference.digest,
            # training images carved out as the validation split (the best checkpoint's selection): the train
            # split is the rest, for training and, as the reference, for the sample metrics
            "validation_images_carved": cfg.validation_images,
        },
        "num_samples": cfg.num_samples,
        "batch_size": cfg.batch_size,  # generation and feature batches: the latent draws are chunked by it
        "kid": {"subsets": cfg.kid_subsets, "subset_size": cfg.kid_subset_size, "kernel": "poly3"},
        "precision_recall": {
            "neighborhood": cfg.prc_neighborhood,
            "real_images": min(cfg.num_samples, n_reference),
            "generated_images": min(cfg.num_samples, n_reference),  # equal counts
        },
        "reference_images": n_reference,
        "real_row": {  # the real-data row: held-out images scored as samples, at the models' N where there are enough
            "split": cfg.held_out_split,
            "images": real_row_images(cfg, dataset),
            "models_also_at_this_n": real_row_images(cfg, dataset) < cfg.num_samples,  # fid_matched
        },
        "inception_score": {"splits": cfg.isc_splits},
        "density_coverage": {"neighborhood": cfg.dc_neighborhood, "counts": "equal, as precision/recall"},
        "data_copying": {  # Meehan et al. 2020, as their code computes it
            "statistic": "C_T: per k-means cell, the Mann-Whitney U of the distances to the nearest training feature "
            "within the cell, generated vs test, z-scored with the continuity correction (U - (mn/2 - 1/2)) / "
            "sqrt(mn(m+n+1)/12); averaged weighted by the cells' test shares",
            "cells": cfg.copying_cells,
            "clustering": "k-means (Lloyd, 50 iterations) of the train split's features, seeded",
            "training": "train split",
            "held_out": "test split",
            "cell_rule": f"cells with more than {COPYING_MIN_SAMPLES} generated samples (tau = 20/m)",
            "sizes": "equal: the larger of the generated and test sets subsampled (seeded) to the smaller",
            "logged": "copying/cells (cells used), copying/test_share (their share of the test images), "
            "copying/samples (m = n)",
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
        "precision": "fp32",
        "tf32": {
            "features": False,  # Encoder.__call__ switches TF32 off
            "generation": torch.device(device).type == "cuda"
            and bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
        },
        "seed": cfg.seed,
        "versions": library_versions(),
    }
    if cfg.ais.images:  # the AIS settings change numbers only where AIS runs
        proto["likelihood_ais"] = {
            "split": "test",
            "observation": "discretised gaussian: N(f(z), sigma^2) per pixel integrated over the bins of the 256 8-bit "
            "values (end bins to infinity), a probability: -log p(x) >= 0 is a code length; sigma chosen on "
            "validation images",
            "own_model_check": "VAEs: AIS under their own observation model on the first `images` observed (binarised "
            "or 8-bit) test images, against their IWAE bound on the same images (the per-image bounds nll_iwae "
            "averages, computed once)",
            "validation": f"the last {cfg.ais.validation_images} test images",
            "step_sizes": "fixed per image by an adaptive pilot (pilot_chains chains), replayed by fresh scored chains",
            "sigma_search": "every candidate sigma in one batched pass: each validation image once per sigma, ranked "
            "by the adaptive pilot's estimates (pilot_chains chains per image), not replayed",
            "bdmc": "the simulated images' forward chains run in the scored images' pass; the reverse run replays "
            "their pilot's step sizes",
            **dataclasses.asdict(cfg.ais),
        }
    if len(real) > 1:  # each extra encoder: what its numbers (<metric>_<encoder>) depend on
        proto["extra_encoders"] = [
            {
                "encoder": r.encoder.name,
                "weights_digest": r.encoder.weights_digest,
                "preprocessing": r.encoder.preprocessing,
                "resize": r.encoder.resize,
                "features_digest": r.reference.digest,
                "metrics": f"<metric>_{encoder_suffix(r.encoder.name)}",
            }
            for r in real[1:]
        ]
    return proto


def selection_protocol(train: TrainConfig, cfg: EvalConfig) -> dict:
    """How the best checkpoint was chosen (protocol.json → best_checkpoint_selection; not in the fingerprint: the
    final numbers do not depend on it)."""
    return {
        "rule": SELECTION_RULE,
        "every": train.eval_every,
        "encoder": SELECTION_ENCODER,
        "samples": train.eval_samples,
        "latent_seed": cfg.seed + SELECTION_SEED_OFFSET,
        "real_split": f"validation: {cfg.validation_images} training images carved out (seed {VALIDATION_SEED}), "
        "disjoint from the training, reference, test and held-out images every reported number uses",
        "metrics": "sample metrics only" if cfg.best_metrics == "sample" else "sample and likelihood metrics",
    }


def fingerprint(proto: dict) -> str:
    return json_digest({k: v for k, v in proto.items() if k != SELECTION_KEY}, 12)


def real_row_images(cfg: EvalConfig, dataset: Dataset) -> int:
    """N of the real-data row: the models' N, or the whole held-out split when it is smaller (then the models are
    also scored at this N: fid_matched)."""
    return min(cfg.num_samples, len(dataset.split(cfg.held_out_split)[0]))


def sample_counts(cfg: EvalConfig, dataset: Dataset, reference: int, generated: int | None = None) -> dict:
    """The N behind the sample metrics, logged with them so a leaderboard can state them."""
    return {
        GENERATED_IMAGES: float(cfg.num_samples if generated is None else generated),
        REFERENCE_IMAGES: float(reference),
        MATCHED_IMAGES: float(real_row_images(cfg, dataset)),
    }

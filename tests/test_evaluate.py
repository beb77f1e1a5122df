"""The protocol fingerprint: every part of the protocol changes it; nothing else does."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from bench.config import AISConfig, EvalConfig
from bench.data import load
from bench.eval.encoders import Encoder
from bench.eval.protocol import fingerprint, protocol
from bench.eval.real_features import RealFeatures, SplitFeatures

CPU = torch.device("cpu")


def bundle(encoder: Encoder, reference_digest: str) -> RealFeatures:
    """What the protocol reads of an encoder's real features: the encoder and the reference features' digest."""
    split = SplitFeatures({}, reference_digest, True, 0.0, Path("-"))
    return RealFeatures(encoder, split, split, None)


def proto_of(cfg, dataset, encoder, ref, device, extras=()):
    return protocol(cfg, dataset, (bundle(encoder, ref), *extras), device)


@pytest.fixture(scope="module")
def parts():
    encoder = Encoder("domain", "w" * 64, "uint8/255, native resolution", torch.nn.Identity(), {})
    return EvalConfig(), load("digits"), encoder, "ref-digest"


# A different valid value for every evaluation setting.
CHANGES = {
    "reference_split": "test",
    "num_samples": 3000,
    "batch_size": 250,
    "iwae_k": 5000,
    "likelihood_images": 7,
    "kid_subsets": 50,
    "kid_subset_size": 500,
    "prc_neighborhood": 5,
    "dc_neighborhood": 3,
    "copying_cells": 10,
    "isc_splits": 5,
    "seed": 1,
    "validation_images": 200,
    "ais": AISConfig(images=10),
}

# A different valid value for every AIS setting (AIS on).
AIS_CHANGES = {
    "images": 20,
    "chains": 8,
    "steps": 500,
    "schedule": "linear",
    "leapfrog": 5,
    "step_size": 0.05,
    "pilot_chains": 4,
    "target_accept": 0.8,
    "sigmas": (0.1,),
    "validation_images": 50,
    "validation_steps": 100,
    "bdmc_images": 0,
    "batch_images": 50,
    "own_steps": 300,
}


def test_every_eval_setting_is_covered():
    # eval.encoder and extra_encoders only select Encoders; the protocol records those used (name, weights,
    # preprocessing, reference digest: test_extra_encoders_are_part_of_the_protocol). eval.best_metrics changes no
    # final number: it is recorded with the best-checkpoint selection (below), outside the fingerprint
    fields = {f.name for f in dataclasses.fields(EvalConfig)}
    assert set(CHANGES) | {"encoder", "extra_encoders", "best_metrics"} == fields


def test_what_the_best_checkpoint_is_scored_on_is_recorded_with_its_selection():
    from bench.config import TrainConfig
    from bench.eval.protocol import selection_protocol

    sample, both = EvalConfig(), EvalConfig(best_metrics="all")
    assert selection_protocol(TrainConfig(), sample)["metrics"] == "sample metrics only"
    assert selection_protocol(TrainConfig(), both)["metrics"] == "sample and likelihood metrics"


@pytest.mark.parametrize("field", list(CHANGES))
def test_changing_an_eval_setting_changes_the_fingerprint(parts, field):
    cfg, dataset, encoder, ref = parts
    base = fingerprint(proto_of(cfg, dataset, encoder, ref, CPU))
    changed = dataclasses.replace(cfg, **{field: CHANGES[field]})
    assert fingerprint(proto_of(changed, dataset, encoder, ref, CPU)) != base


def test_every_ais_setting_changes_the_fingerprint_and_ais_off_leaves_it_as_before(parts):
    cfg, dataset, encoder, ref = parts
    assert set(AIS_CHANGES) == {f.name for f in dataclasses.fields(AISConfig)}
    on = dataclasses.replace(cfg, ais=AISConfig(images=10))
    base = fingerprint(proto_of(on, dataset, encoder, ref, CPU))
    changed = {
        fingerprint(
            proto_of(dataclasses.replace(on, ais=dataclasses.replace(on.ais, **{k: v})), dataset, encoder, ref, CPU)
        )
        for k, v in AIS_CHANGES.items()
    }
    assert base not in changed and len(changed) == len(AIS_CHANGES)
    # with AIS off its settings change no number, so they are not part of the protocol
    off = proto_of(dataclasses.replace(cfg, ais=AISConfig(chains=3)), dataset, encoder, ref, CPU)
    assert "likelihood_ais" not in off and fingerprint(off) == fingerprint(proto_of(cfg, dataset, encoder, ref, CPU))


def test_encoder_reference_and_data_change_the_fingerprint(parts):
    cfg, dataset, encoder, ref = parts
    base = fingerprint(proto_of(cfg, dataset, encoder, ref, CPU))
    flipped = dataset.test_images.clone()
    flipped[0] = 255 - flipped[0]  # one other test image, the same dataset digest field: another binarised test set
    variants = [
        (cfg, dataclasses.replace(dataset, test_images=flipped), encoder, ref),
        (cfg, dataset, dataclasses.replace(encoder, name="inception"), ref),
        (cfg, dataset, dataclasses.replace(encoder, weights_digest="v" * 64), ref),
        (cfg, dataset, dataclasses.replace(encoder, preprocessing="(x-128)/128"), ref),
        (cfg, dataset, dataclasses.replace(encoder, resize="bilinear 299x299"), ref),
        (cfg, dataset, encoder, "another-reference-digest"),
        (cfg, dataclasses.replace(dataset, digest="d" * 64), encoder, ref),
        (cfg, dataclasses.replace(dataset, name="cifar10"), encoder, ref),  # another likelihood convention too
    ]
    fingerprints = {fingerprint(proto_of(*v, CPU)) for v in variants}
    assert base not in fingerprints and len(fingerprints) == len(variants)


def test_protocol_records_precision_tf32_and_versions(parts):
    proto = proto_of(*parts, CPU)
    assert proto["precision"] == "fp32" and proto["tf32"] == {"features": False, "generation": False}
    assert set(proto["versions"]) == {"torch", "torch-fidelity", "torchmetrics"}
    assert proto["likelihood"]["observation"] == "bernoulli"


def test_the_protocol_states_sample_counts_the_real_row_and_the_binarised_images(parts):
    cfg, dataset, encoder, ref = parts  # digits: 1,437 train (reference), 360 test (held out); N = 2,000
    proto = proto_of(cfg, dataset, encoder, ref, CPU)
    assert proto["reference_images"] == 1437 and proto["num_samples"] == 2000
    assert proto["real_row"] == {"split": "test", "images": 360, "models_also_at_this_n": True}
    assert proto["precision_recall"]["real_images"] == proto["precision_recall"]["generated_images"] == 1437
    small = dataclasses.replace(cfg, num_samples=300, kid_subset_size=300)
    assert proto_of(small, dataset, encoder, ref, CPU)["real_row"]["images"] == 300  # the models' N
    assert len(proto["likelihood"]["observed_digest"]) == 16
    # the best-checkpoint selection rule is recorded beside the protocol but does not split leaderboard tables
    assert fingerprint({**proto, "best_checkpoint_selection": {"every": 500}}) == fingerprint(proto)


def test_extra_encoders_are_part_of_the_protocol(parts):
    cfg, dataset, encoder, ref = parts
    base = proto_of(cfg, dataset, encoder, ref, CPU)
    assert "extra_encoders" not in base  # one encoder: nothing to record of others
    extra = Encoder("dinov2", "w" * 64, "p", torch.nn.Identity(), {}, resize="r")
    with_extra = proto_of(cfg, dataset, encoder, ref, CPU, extras=[bundle(extra, "f1")])
    other_weights = dataclasses.replace(extra, weights_digest="v" * 64)
    other_weights = proto_of(cfg, dataset, encoder, ref, CPU, extras=[bundle(other_weights, "f1")])
    other_reference = proto_of(cfg, dataset, encoder, ref, CPU, extras=[bundle(extra, "f2")])
    (part,) = with_extra["extra_encoders"]
    assert part["encoder"] == "dinov2" and part["features_digest"] == "f1" and part["metrics"] == "<metric>_dinov2"
    prints = {fingerprint(p) for p in (base, with_extra, other_weights, other_reference)}
    assert len(prints) == 4

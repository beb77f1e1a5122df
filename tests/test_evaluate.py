"""The protocol fingerprint: every part of the protocol changes it; nothing else does."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.config import AISConfig, EvalConfig
from bench.data import load
from bench.eval.encoders import Extractor
from bench.eval.pipeline import fingerprint, protocol

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def parts():
    extractor = Extractor("domain", "w" * 64, "uint8/255, native resolution", torch.nn.Identity(), {})
    return EvalConfig(), load("digits"), extractor, "ref-digest"


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
}


def test_every_eval_setting_is_covered():
    # eval.extractor and extra_extractors only select Extractors; the protocol records those used (name, weights,
    # preprocessing, reference digest: test_extra_encoders_are_part_of_the_protocol)
    assert set(CHANGES) | {"extractor", "extra_extractors"} == {f.name for f in dataclasses.fields(EvalConfig)}


@pytest.mark.parametrize("field", list(CHANGES))
def test_changing_an_eval_setting_changes_the_fingerprint(parts, field):
    cfg, dataset, extractor, ref = parts
    base = fingerprint(protocol(cfg, dataset, extractor, ref, CPU))
    changed = dataclasses.replace(cfg, **{field: CHANGES[field]})
    assert fingerprint(protocol(changed, dataset, extractor, ref, CPU)) != base


def test_every_ais_setting_changes_the_fingerprint_and_ais_off_leaves_it_as_before(parts):
    cfg, dataset, extractor, ref = parts
    assert set(AIS_CHANGES) == {f.name for f in dataclasses.fields(AISConfig)}
    on = dataclasses.replace(cfg, ais=AISConfig(images=10))
    base = fingerprint(protocol(on, dataset, extractor, ref, CPU))
    changed = {
        fingerprint(
            protocol(dataclasses.replace(on, ais=dataclasses.replace(on.ais, **{k: v})), dataset, extractor, ref, CPU)
        )
        for k, v in AIS_CHANGES.items()
    }
    assert base not in changed and len(changed) == len(AIS_CHANGES)
    # with AIS off its settings are not part of the protocol: runs from before AIS keep their fingerprints
    off = protocol(dataclasses.replace(cfg, ais=AISConfig(chains=3)), dataset, extractor, ref, CPU)
    assert "likelihood_ais" not in off and fingerprint(off) == fingerprint(protocol(cfg, dataset, extractor, ref, CPU))


def test_extractor_reference_and_data_change_the_fingerprint(parts):
    cfg, dataset, extractor, ref = parts
    base = fingerprint(protocol(cfg, dataset, extractor, ref, CPU))
    flipped = dataset.test_images.clone()
    flipped[0] = 255 - flipped[0]  # one other test image, the same dataset digest field: another binarised test set
    variants = [
        (cfg, dataclasses.replace(dataset, test_images=flipped), extractor, ref),
        (cfg, dataset, dataclasses.replace(extractor, name="inception"), ref),
        (cfg, dataset, dataclasses.replace(extractor, weights_digest="v" * 64), ref),
        (cfg, dataset, dataclasses.replace(extractor, preprocessing="(x-128)/128"), ref),
        (cfg, dataset, dataclasses.replace(extractor, resize="bilinear 299x299"), ref),
        (cfg, dataset, extractor, "another-reference-digest"),
        (cfg, dataclasses.replace(dataset, digest="d" * 64), extractor, ref),
        (cfg, dataclasses.replace(dataset, name="cifar10"), extractor, ref),  # another likelihood convention too
    ]
    fingerprints = {fingerprint(protocol(*v, CPU)) for v in variants}
    assert base not in fingerprints and len(fingerprints) == len(variants)


def test_protocol_records_precision_tf32_and_versions(parts):
    proto = protocol(*parts, CPU)
    assert proto["precision"] == "fp32" and proto["tf32"] == {"features": False, "generation": False}
    assert set(proto["versions"]) == {"torch", "torch-fidelity", "torchmetrics"}
    assert proto["likelihood"]["observation"] == "bernoulli"


def test_the_protocol_states_sample_counts_the_real_row_and_the_binarised_images(parts):
    cfg, dataset, extractor, ref = parts  # digits: 1,437 train (reference), 360 test (held out); N = 2,000
    proto = protocol(cfg, dataset, extractor, ref, CPU)
    assert proto["reference_images"] == 1437 and proto["num_samples"] == 2000
    assert proto["real_row"] == {"split": "test", "images": 360, "models_also_at_this_n": True}
    assert proto["precision_recall"]["real_images"] == proto["precision_recall"]["generated_images"] == 1437
    small = dataclasses.replace(cfg, num_samples=300, kid_subset_size=300)
    assert protocol(small, dataset, extractor, ref, CPU)["real_row"]["images"] == 300  # the models' N
    assert len(proto["likelihood"]["observed_digest"]) == 16
    # the best-checkpoint selection rule is recorded beside the protocol but does not split leaderboard tables
    assert fingerprint({**proto, "best_checkpoint_selection": {"every": 500}}) == fingerprint(proto)


def test_extra_encoders_are_part_of_the_protocol(parts):
    cfg, dataset, extractor, ref = parts
    base = protocol(cfg, dataset, extractor, ref, CPU)
    assert "extra_extractors" not in base  # one encoder: the protocol (and fingerprint) of before
    part = {
        "extractor": "dinov2",
        "weights_digest": "w" * 64,
        "preprocessing": "p",
        "resize": "r",
        "features_digest": "f1",
        "metrics": "<metric>_dinov2",
    }
    with_extra = protocol(cfg, dataset, extractor, ref, CPU, extras=[part])
    other_weights = protocol(cfg, dataset, extractor, ref, CPU, extras=[{**part, "weights_digest": "v" * 64}])
    other_reference = protocol(cfg, dataset, extractor, ref, CPU, extras=[{**part, "features_digest": "f2"}])
    prints = {fingerprint(p) for p in (base, with_extra, other_weights, other_reference)}
    assert len(prints) == 4

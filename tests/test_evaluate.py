"""The protocol fingerprint: every part of the protocol changes it; nothing else does."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.config import EvalConfig
from bench.data import load
from bench.evaluate import fingerprint, protocol
from bench.features import Extractor

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
    "isc_splits": 5,
    "seed": 1,
}


def test_every_eval_setting_is_covered():
    # eval.extractor only selects the Extractor; the protocol records the one used (name, weights, preprocessing)
    assert set(CHANGES) | {"extractor"} == {f.name for f in dataclasses.fields(EvalConfig)}


@pytest.mark.parametrize("field", list(CHANGES))
def test_changing_an_eval_setting_changes_the_fingerprint(parts, field):
    cfg, dataset, extractor, ref = parts
    base = fingerprint(protocol(cfg, dataset, extractor, ref, CPU))
    changed = dataclasses.replace(cfg, **{field: CHANGES[field]})
    assert fingerprint(protocol(changed, dataset, extractor, ref, CPU)) != base


def test_extractor_reference_and_data_change_the_fingerprint(parts):
    cfg, dataset, extractor, ref = parts
    base = fingerprint(protocol(cfg, dataset, extractor, ref, CPU))
    assert fingerprint(protocol(cfg, dataset, extractor, ref, CPU)) == base  # deterministic
    variants = [
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

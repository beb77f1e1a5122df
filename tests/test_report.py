"""The leaderboard's table logic on a synthetic store (bench.report.build reads a DataFrame of runs)."""

from __future__ import annotations

import pandas as pd

from bench import report


def _run(model, variant, seed, fid, **params):
    row = {
        "status": "FINISHED",
        "start_time": seed,
        "bench.cell": f"{variant}-{seed}",
        "bench.dataset": "digits",
        "bench.protocol": "p1",
        "bench.model": model,
        "bench.variant": variant,
        "bench.family": "gan" if model != "vae-mlp" else "vae",
        "bench.seed": str(seed),
        "metrics.fid": fid,
        "params.cell.seed": str(seed),  # differs between runs, never between variants: not a label
        "params.overrides": "[]",
    }
    row.update({f"params.{k}": v for k, v in params.items()})
    return row


def test_variants_of_one_model_are_labelled_by_the_params_that_differ():
    fp32 = {"train.precision": "fp32", "train.steps": "1500", "model.lr": "2e-4"}
    runs = pd.DataFrame(
        [
            _run("gan-mlp", "aaaaaaaa11", 0, 3.0, **fp32),
            _run("gan-mlp", "aaaaaaaa11", 1, 3.4, **fp32),
            _run("gan-mlp", "bbbbbbbb22", 0, 4.6, **{**fp32, "train.precision": "bf16"}),
            _run("vae-mlp", "cccccccc33", 0, 31.0, **{**fp32, "model.lr": "1e-3"}),
        ]
    )
    (section,) = report.build(runs)
    labels = dict(zip(section.table["variant"], section.table["label"], strict=True))
    assert labels == {
        "aaaaaaaa11": "gan-mlp (train.precision=fp32)",
        "bbbbbbbb22": "gan-mlp (train.precision=bf16)",
        "cccccccc33": "vae-mlp",  # one variant: no label
    }
    assert any("labelled by the params in which their variants differ" in n for n in section.notes)
    md = report.to_markdown("quick", [section])
    assert "| 1 | gan-mlp (train.precision=fp32) | 2 | **3.20 ± 0.28** |" in md


def test_variant_label_caps_the_params_and_falls_back_to_the_hash():
    many = {f"model.k{i}": str(i) for i in range(5)}
    runs = pd.DataFrame(
        [_run("dcgan", "v1xxxxxxxx", 0, 1.0, **many), _run("dcgan", "v2yyyyyyyy", 0, 2.0, **dict.fromkeys(many, "x"))]
    )
    assert report.variant_label(runs, "dcgan", "v2yyyyyyyy") == "model.k0=x, model.k1=x, model.k2=x, +2 more"
    same = pd.DataFrame([_run("dcgan", "v1xxxxxxxx", 0, 1.0), _run("dcgan", "v2yyyyyyyy", 0, 2.0)])
    assert report.variant_label(same, "dcgan", "v2yyyyyyyy") == "v2yyyyyy"

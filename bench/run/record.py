"""Recording an evaluation into an MLflow run, in one place for the three kinds of run that hold one: a cell of a
suite, the real-data row of a (dataset, protocol), and samples made elsewhere (`bench eval`). Each is opened with
the same tags (`open_run`) and gets the same record (`record`): the protocol tag and protocol.json, the metrics,
the sample grid and, for samples, the nearest-training-images grid."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.utils import make_grid

from bench import schema, tracking
from bench.eval.pipeline import Evaluation, nearest_grid

GRID_IMAGES = 64  # images in a logged sample grid (8 × 8)


def open_run(
    tracker: tracking.Tracker,
    name: str,
    *,
    suite: str,
    model: str,
    family: str,
    dataset,
    seed: int | str,
    key: str,
    variant: str,
    parent: tracking.Run | None = None,
    holder: str = "",
) -> tracking.Run:
    """A new run with the tags every leaderboard row is built from (schema: bench.suite, .model, .family, .dataset,
    .observation, .seed, .cell, .variant, .protocol_version); `dataset` is a bench.data.Dataset."""
    tags = {
        schema.SUITE: suite,
        schema.MODEL: model,
        schema.FAMILY: family,
        schema.DATASET: dataset.name,
        schema.OBSERVATION: dataset.observation,
        schema.SEED: seed,
        schema.CELL: key,
        schema.VARIANT: variant,
        schema.PROTOCOL_VERSION_TAG: schema.PROTOCOL_VERSION,
        **({schema.HOLDER: holder} if holder else {}),  # who claims it (the lease's fence)
    }
    return tracker.start_run(name, tags, parent=parent)


def record(
    run: tracking.Run,
    ev: Evaluation,
    *,
    metrics: dict[str, float] | None = None,
    step: int | None = None,
    protocol: dict | None = None,
    samples_artifact: str = schema.SAMPLES_FINAL,
    model_id: str | None = None,
) -> None:
    """`ev` into `run`: its fingerprint as bench.protocol, `protocol` (default ev.protocol) as protocol.json, its
    metrics with `metrics` beside them at `step`, the AIS details, a grid of its samples at `samples_artifact` and,
    when the evaluation found them, the samples beside their nearest training images. `model_id`: the LoggedModel
    evaluated, whose metrics these also are."""
    run.set_tags({schema.PROTOCOL: ev.fingerprint})
    run.log_dict(ev.protocol if protocol is None else protocol, schema.PROTOCOL_ARTIFACT)
    if "ais" in ev.details:
        run.log_dict(ev.details["ais"], schema.AIS_ARTIFACT)
        if "own_model_check" in ev.details["ais"]:  # a VAE's AIS against its IWAE bound: "ok" or what went wrong
            check = ev.details["ais"]["own_model_check"]
            run.set_tags({schema.AIS_CHECK: "ok" if check == "ok" else f"violated: {check}"})
    run.log_metrics({**ev.metrics, **(metrics or {})}, step=step, model_id=model_id)
    run.log_image(grid(ev.samples[:GRID_IMAGES]), samples_artifact)
    if "nearest" in ev.details:
        run.log_image(grid(nearest_grid(*ev.details["nearest"]), per_row=4), schema.NEAREST_TRAIN)


def grid(images: torch.Tensor, per_row: int = 8) -> np.ndarray:
    """uint8 (N, C, H, W) → one (H', W', C) uint8 grid image, `per_row` images per row."""
    tiled = make_grid(images, nrow=per_row, padding=2, pad_value=128)  # (C, H', W') uint8
    return tiled.permute(1, 2, 0).numpy()


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """A nested config dict as MLflow params: {"train": {"steps": 5}} → {"train.steps": 5}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out

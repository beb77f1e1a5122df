"""genbench from Python, with the protocol and fingerprints of the command line.

    import bench
    scores = bench.evaluate("samples/", reference="digits:train", dataset="digits")
    scores["metrics"]["fid_domain"]
    outcomes = bench.run_suite("quick", overrides=["train.steps=500"])

`evaluate` is `bench eval --json` (nothing is logged); `run_suite` is `bench run` (everything is logged to MLflow).
Errors are exceptions with the command line's one-line messages: bench.config.ConfigError for configuration,
bench.tools.images.SampleError for samples and references, bench.data.DataError for datasets,
bench.eval.metrics.MetricError for unknown metric names.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import config as config_module
from bench.devices import resolve_device


def _results(results) -> Path:
    return Path(results if results is not None else os.environ.get("BENCH_RESULTS", "results"))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def evaluate(
    samples,
    reference=None,
    *,
    dataset: str | None = None,
    suite: str | None = None,
    encoder: str | Sequence[str] | None = None,
    metrics: str | Sequence[str] | None = None,
    batch_size: int | None = None,
    allow_small_n: bool = False,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    results: str | Path | None = None,
    device: str = "auto",
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Sample metrics of `samples` (a folder of PNG, JPEG, WebP, BMP or TIFF images or of class folders, a .npy/.npz
    file, or a uint8 (N, C, H, W) / float [0, 1] array or tensor) against `reference` (the same kinds,
    "dataset:split", or torch-fidelity's "cifar10-train"; default: the reference split of `dataset`).

    Without `suite` or `dataset` the encoder is Inception (`encoder`: one name or several; the `domain` encoder needs
    `dataset`), and the metrics are named with it (`fid_inception`, `kid_mean_inception`). `metrics` ("fid,kid" or
    ["fid", "prc"]; fid, fid_inf, is, kid, prc, dc) computes only those; an unknown name raises before any work.
    Under a suite's protocol (`suite`) against the dataset's reference split the numbers, plain names and
    fingerprint equal those of `bench eval --suite` and `bench run`. What takes time (a domain encoder's training,
    reference features, the encoder passes) is reported line by line through `echo`, by default on stderr
    (`echo=lambda line: None` silences it). Returns {"encoder": the first encoder, "encoders": [...], "metrics":
    {name: value}, "protocol": fingerprint, "samples": N, "reference": what it was}."""
    from bench.tools.external import score

    cfg = config_module.load(config, tuple(overrides), suite)
    names = (encoder,) if isinstance(encoder, str) else tuple(encoder or ())
    return score(
        cfg,
        samples,
        suite_name=suite,
        dataset_name=dataset,
        reference=reference,
        encoders=names,
        metrics=metrics,
        batch_size=batch_size,
        allow_small_n=allow_small_n,
        results=_results(results),
        device=resolve_device(device),
        echo=echo if echo is not None else _stderr,
    ).as_dict()


def run_suite(
    suite: str,
    *,
    overrides: Sequence[str] = (),
    config: str | Path | None = None,
    results: str | Path | None = None,
    tracking_uri: str | None = None,
    executor: str = "local",
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> list[dict]:
    """`bench run --suite SUITE`: every cell trained, evaluated and logged (finished cells skipped, interrupted ones
    resumed). Returns one dict per cell: model, dataset, seed, status (FINISHED, SKIPPED, FAILED), run_id, error,
    metrics."""
    from bench.run.suite import run_suite as run

    cfg = config_module.load(config, tuple(overrides), suite)
    outcomes = run(
        cfg,
        suite,
        tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
        results=_results(results),
        overrides=tuple(overrides),
        executor=executor,
        progress=progress,
        echo=echo,
    )
    return [
        {
            "model": o.cell.model,
            "dataset": o.cell.dataset,
            "seed": o.cell.seed,
            "status": o.status,
            "run_id": o.run_id,
            "error": o.error,
            "metrics": dict(o.metrics),
        }
        for o in outcomes
    ]

"""The tool commands: `bench perf`, `bench eval`, `bench sample`, `bench check-model`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from bench import config, schema
from bench.cli.common import (
    complete_datasets,
    complete_models,
    complete_suites,
    config_option,
    fail,
    load_config,
    results,
    uri_option,
)
from bench.config import ConfigError


@click.command(short_help="Training throughput against plain PyTorch.")
@click.option("--models", default=None, shell_complete=complete_models, help="Comma-separated baselines [all of them].")
@click.option("--shapes", default="28,32", show_default=True, help="28 (1x28x28) and/or 32 (3x32x32).")
@click.option("--steps", type=click.IntRange(1), default=20, show_default=True, help="Timed steps per loop.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--device", type=click.Choice(config.DEVICES), default="auto", show_default=True)
@click.option("--repeats", type=click.IntRange(1), default=1, show_default=True,
              help="Time each loop this many times, alternating, and keep the best.")  # fmt: skip
@click.option("--overhead-steps", type=click.IntRange(1), default=300, show_default=True,
              help="Steps of the logged gan-mlp loop that measures tracking overhead.")  # fmt: skip
@click.option("--precision", type=click.Choice(config.PRECISIONS), default="fp32", show_default=True,
              help="genbench's loop: bf16 autocast (train.precision).")  # fmt: skip
@click.option("--channels-last", is_flag=True, help="genbench's loop: NHWC memory format (train.channels_last).")
@click.option("--compile", "compile_", is_flag=True, help="genbench's loop: torch.compile (train.compile).")
@click.option("--tf32", is_flag=True, help="genbench's loop: TF32 matmuls/convolutions on CUDA (train.tf32).")
@click.option("--cuda-graph", is_flag=True, help="genbench's loop: one CUDA graph per step (train.cuda_graph).")
@click.option("--variant", "variants", multiple=True, metavar="SPEC",
              help="Time several variants of genbench's loop against one reference loop, e.g. --variant fp32 "
              "--variant bf16+channels_last+cuda_graph (replaces the single-variant flags).")  # fmt: skip
@uri_option
def perf(
    models: str,
    shapes: str,
    steps: int,
    batch_size: int,
    device: str,
    repeats: int,
    overhead_steps: int,
    precision: str,
    channels_last: bool,
    compile_: bool,
    tf32: bool,
    cuda_graph: bool,
    variants: tuple[str, ...],
    tracking_uri: str | None,
) -> None:
    """Training throughput against a plain PyTorch loop, evaluation throughput, tracking overhead; logged to the
    MLflow experiment `perf`. The speed options apply to genbench's loop; the reference loop stays plain fp32 eager.
    On CUDA the GPU's utilisation is sampled too (time enough steps, e.g. --steps 1000, for NVML to see them)."""
    import baselines
    from bench import tracking
    from bench.devices import bf16_note, resolve_device
    from bench.tools import perf as perf_mod

    names = [m.strip() for m in (models or ",".join(baselines.MODELS)).split(",") if m.strip()]
    unknown = [m for m in names if m not in baselines.MODELS]
    bad_shapes = [s for s in shapes.split(",") if s not in perf_mod.SHAPES]
    if unknown or bad_shapes or not names:
        fail(
            f"unknown model(s) {unknown} / shape(s) {bad_shapes}; models: {', '.join(baselines.MODELS)}; "
            f"shapes: {', '.join(perf_mod.SHAPES)}"
        )
    try:
        dev = resolve_device(device)
    except ConfigError as e:
        fail(str(e))
    speed = {"precision": precision, "channels_last": channels_last, "compile": compile_, "tf32": tf32,
             "cuda_graph": cuda_graph}  # fmt: skip
    try:
        speeds = [perf_mod.parse_variant(v) for v in variants] or [perf_mod.check_speed(speed, "the speed options")]
    except ValueError as e:
        fail(str(e))
    click.echo(
        f"bench perf on {dev}: {steps} timed steps per loop, batch {batch_size}, "
        f"genbench's loop {', '.join(perf_mod.speed_label(s) for s in speeds)}"
    )
    if any(s["precision"] == "bf16" for s in speeds) and (note := bf16_note(dev)):
        click.echo(note)
    rows, overhead = perf_mod.measure(
        names, shapes.split(","), steps, batch_size, dev, click.echo, overhead_steps, repeats, speeds
    )
    text = perf_mod.table(rows, overhead, dev, speeds)
    click.echo("\n" + text)
    uri = tracking.resolve_uri(tracking_uri, results())
    params = {
        "device": str(dev),
        "steps": steps,
        "batch_size": batch_size,
        "threads": __import__("torch").get_num_threads(),
        "repeats": repeats,
        **(speeds[0] if len(speeds) == 1 else {"variants": "; ".join(perf_mod.speed_label(s) for s in speeds)}),
    }
    run_id = perf_mod.log(uri, rows, overhead, params, text, results())
    click.echo(f"logged to MLflow experiment perf (run {run_id}) at {uri}")


@click.command(name="eval", short_help="Score samples made elsewhere.")
@click.option(
    "--samples",
    "samples_path",
    required=True,
    type=click.Path(path_type=Path),
    help="A .npy/.npz array (N, C, H, W) or (N, H, W, C), uint8 or floats in [0, 1], or a folder of PNG, JPEG, WebP, "
    "BMP or TIFF images (or of class folders of them; odd-sized images resized to the most common size, PIL "
    "bicubic, said in the protocol).",
)
@click.option(
    "--suite",
    shell_complete=complete_suites,
    default=None,
    help="The suite whose protocol scores them [default settings, every sample].",
)
@click.option(
    "--dataset",
    default=None,
    shell_complete=complete_datasets,
    help="The dataset the samples imitate (its domain encoder, its reference).",
)
@click.option(
    "--reference",
    default=None,
    help="What to compare with: a folder or array of images, DATASET:SPLIT, or torch-fidelity's cifar10-train / "
    "cifar10-val [the dataset's reference split].",
)
@click.option(
    "--encoder",
    "encoders",
    multiple=True,
    help="A feature encoder: inception, dinov2, dinov2-vits14, ..., domain (repeat for several) [the suite's; "
    "without --suite or --dataset: inception].",
)
@click.option(
    "--metrics",
    "metric_names",
    default=None,
    metavar="NAMES",
    help="Compute only these, comma-separated: fid, fid_inf, is (isc), kid, prc (precision and recall), dc (density "
    "and coverage) [all].",
)
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:1, mps, or auto.")
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=None,
    help="Images per encoder pass [500; under --suite: --set eval.batch_size=N].",
)
@click.option(
    "--allow-small-n",
    is_flag=True,
    help="Compute FID with no more images a side than feature dimensions (biased; a warning, and marked in the "
    "protocol).",
)
@click.option("--name", default=None, help="Log the samples as a leaderboard row with this label (tag bench.model).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@uri_option
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (as bench run).")
@config_option
def eval_(
    samples_path: Path,
    suite: str | None,
    dataset: str | None,
    reference: str | None,
    encoders: tuple[str, ...],
    metric_names: str | None,
    device: str,
    batch_size: int | None,
    allow_small_n: bool,
    name: str | None,
    as_json: bool,
    tracking_uri: str | None,
    overrides: tuple[str, ...],
    config_path: str,
) -> None:
    """Score samples made elsewhere: print their metrics (nothing logged), or with --name log them as an
    `external` run beside a suite's models.

    \b
    bench eval --samples gen/ --reference real/ --json                     # Inception: fid_inception, ...
    bench eval --samples gen/ --reference cifar10-train --metrics fid,kid  # only FID and KID
    bench eval --samples gen/ --dataset digits --json                      # vs digits' reference split
    bench eval --samples s.npz --suite quick --dataset digits --name mine  # a leaderboard row

    Outside a suite, metric names carry the encoder (fid_inception, kid_mean_dinov2); under --suite they are the
    suite's plain names (fid) and every metric of its protocol is computed. FID fits a Gaussian to each side's
    features, so it needs more images a side than feature dimensions (Inception: 2,048; DINOv2 ViT-S: 384):
    fewer is an error unless --allow-small-n. Samples that are the reference images (a sanity check) score FID 0
    with a warning."""
    cfg = load_config(config_path, overrides, suite)
    if name is not None:
        if suite is None or dataset is None:
            fail("--name logs a leaderboard row under a suite's protocol: give --suite and --dataset too")
        if reference is not None or encoders or metric_names or allow_small_n:
            fail(
                "--name scores under the suite's own reference, encoders and metrics: leave out --reference, "
                "--encoder, --metrics and --allow-small-n"
            )
        known = cfg.suite(suite).datasets
        if dataset not in known:
            fail(f"dataset {dataset!r} is not in suite {suite!r} (its datasets: {', '.join(known)})")
        if not name.strip() or name in cfg.models or name == schema.REAL_MODEL:
            fail(f"--name {name!r}: give a label of your own, not empty and not a model or '{schema.REAL_MODEL}'")
    elif dataset is None and reference is None:
        fail("give --dataset (compare with its reference split) or --reference (a folder, an array or DATASET:SPLIT)")
    from bench import tracking
    from bench.data import DataError, load
    from bench.devices import resolve_device
    from bench.eval.encoders import EncoderError
    from bench.eval.metrics import MetricError, metric_groups
    from bench.tools.external import SampleError, score, score_and_log

    echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    try:
        which = metric_groups(metric_names)  # an unknown name: an error before anything is read
        if batch_size is not None and suite is not None:
            fail("--batch-size is part of a suite's protocol: give --set eval.batch_size=N with --suite")
        if device == "auto" and suite:  # the suite's own device setting
            device_ = resolve_device(cfg.suite(suite).train.device, "train.device")
        else:
            device_ = resolve_device(device, "--device")
        if name is None:
            result = score(cfg, samples_path, suite_name=suite, dataset_name=dataset, reference=reference,
                           encoders=encoders, metrics=which, batch_size=batch_size, allow_small_n=allow_small_n,
                           results=results(), device=device_, echo=echo).as_dict()  # fmt: skip
        else:
            s = cfg.suite(suite)
            data = load(dataset, validation=s.eval.validation_images)
            uri = tracking.resolve_uri(tracking_uri, results())
            logged = score_and_log(cfg, suite, data, samples_path, name, uri, results(), device_, echo)
            result = {**logged.as_dict(), "run_id": logged.run_id}
    except (SampleError, DataError, EncoderError, MetricError, ConfigError, tracking.TrackingError) as e:
        fail(str(e))
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    metrics = result["metrics"]
    shown = [k for k in (schema.FID, schema.FID_INF, schema.KID_MEAN, schema.PRECISION, schema.RECALL) if k in metrics]
    if name is None:
        click.echo(f"{result['samples']} samples against {result['reference']}, {' and '.join(result['encoders'])} "
                   f"features (protocol {result['protocol']}):")  # fmt: skip
        for key in sorted(metrics):
            click.echo(f"  {key:<28} {metrics[key]:.6g}")
        return
    values = ", ".join(f"{k} {metrics[k]:.6g}" for k in shown)
    click.echo(f"{name} on {dataset}: {values} (run {result['run_id']}, family external)")
    click.echo(f"report: bench report --suite {suite}")


@click.command(short_help="Draw samples from a logged model.")
@click.argument("run_id")
@click.option("-n", "n", type=click.IntRange(1), default=64, show_default=True, help="Number of samples.")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="grid.png (8 per row), or samples.npz / samples.npy (the uint8 (N, C, H, W) array).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Latent seed (the run's eval.seed reproduces its evaluated samples).",
)
@click.option("--checkpoint", type=click.Choice(list(schema.CHECKPOINTS)), default="final", show_default=True)
@click.option(
    "--batch-size",
    type=click.IntRange(1),
    default=None,
    help="Latent chunk size [the run's eval.batch_size: what reproduces the evaluation's samples].",
)
@click.option("--device", type=click.Choice(config.DEVICES), default="auto", show_default=True)
@uri_option
def sample(
    run_id: str,
    n: int,
    out: Path,
    seed: int,
    checkpoint: str,
    batch_size: int | None,
    device: str,
    tracking_uri: str | None,
) -> None:
    """Draw samples from the model a `bench run` cell logged to MLflow (run RUN_ID)."""
    from bench import tracking
    from bench.devices import resolve_device
    from bench.run.checkpoints import CheckpointError
    from bench.tools.external import SampleError, draw, write_samples

    if out.suffix not in (".png", ".npz", ".npy"):
        fail(f"--out {out}: write .png (a grid), .npz or .npy (the uint8 array)")
    try:
        uri = tracking.resolve_uri(tracking_uri, results())
        tracking.check_reachable(uri)
        samples = draw(uri, run_id, n, seed, checkpoint, batch_size, resolve_device(device))
        what = write_samples(samples, out)
    except (SampleError, CheckpointError, tracking.TrackingError) as e:
        fail(str(e))
    click.echo(f"{out}: {what} from run {run_id} ({checkpoint} model, seed {seed})")


@click.command(name="check-model", short_help="Check a model keeps the contract.")
@click.argument("name")
@click.option(
    "--shape",
    type=click.Choice(["28", "32"]),
    default="28",
    show_default=True,
    help="28: 1x28x28 (MNIST family, binary pixels); 32: 3x32x32 (CIFAR-10, 8-bit values).",
)
@config_option
def check_model(name: str, shape: str, config_path: str) -> None:
    """Check that model NAME (a baseline or a plugin) keeps the model contract, in seconds on the CPU."""
    load_config(config_path)  # registers the plugins of bench.toml and of installed packages
    import baselines
    from bench.tools.check_model import check

    if name not in baselines.models():
        fail(f"unknown model {name!r}; known models: {', '.join(baselines.models())}")
    image_shape, observation = ((1, 28, 28), "bernoulli") if shape == "28" else ((3, 32, 32), "discretized-logistic")
    click.echo(f"{name} ({baselines.source(name)}) on {'x'.join(map(str, image_shape))} images, {observation}:")
    checks = check(name, image_shape, observation)
    for c in checks:
        click.echo(c.line())
    failed = [c for c in checks if not c.ok]
    if failed:
        click.echo(f"{name}: {len(failed)} of {len(checks)} checks FAILED", err=True)
        sys.exit(1)
    click.echo(f"{name}: all {len(checks)} checks passed")

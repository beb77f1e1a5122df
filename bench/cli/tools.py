"""The tool commands: `bench perf`, `bench eval`, `bench sample`, `bench check-model`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bench import config, schema
from bench.cli.common import config_option, fail, load_config, results, uri_option
from bench.config import ConfigError


@click.command()
@click.option("--models", default=None, help="Comma-separated baselines [all of them].")
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


@click.command(name="eval")
@click.option("--suite", required=True, help="The suite whose protocol scores the samples (see `bench list`).")
@click.option("--dataset", required=True, help="The dataset of the suite the samples imitate.")
@click.option(
    "--samples",
    "samples_path",
    required=True,
    type=click.Path(path_type=Path),
    help="A .npy/.npz array (N, C, H, W) or (N, H, W, C), uint8 or floats in [0, 1], or a folder of PNGs.",
)
@click.option("--name", required=True, help="The row label in the leaderboard (tag bench.model).")
@uri_option
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (as bench run).")
@config_option
def eval_(
    suite: str,
    dataset: str,
    samples_path: Path,
    name: str,
    tracking_uri: str | None,
    overrides: tuple[str, ...],
    config_path: str,
) -> None:
    """Score samples made elsewhere under a suite's protocol; log them as an `external` run beside the models."""
    cfg = load_config(config_path, overrides, suite)
    s = cfg.suite(suite)
    if dataset not in s.datasets:
        fail(f"dataset {dataset!r} is not in suite {suite!r} (its datasets: {', '.join(s.datasets)})")
    if not name.strip() or name in cfg.models or name == schema.REAL_MODEL:
        fail(f"--name {name!r}: give a label of your own, not empty and not a model or '{schema.REAL_MODEL}'")
    from bench import tracking
    from bench.data import DataError, load
    from bench.devices import resolve_device
    from bench.eval.encoders import EncoderError
    from bench.eval.metrics import MetricError
    from bench.tools.external import SampleError, score_and_log

    try:
        data = load(dataset, validation=s.eval.validation_images)
        uri = tracking.resolve_uri(tracking_uri, results())
        run_id, metrics = score_and_log(
            cfg, suite, data, samples_path, name, uri, results(), resolve_device(s.train.device), click.echo
        )
    except (SampleError, DataError, EncoderError, MetricError, tracking.TrackingError) as e:
        fail(str(e))
    shown = ", ".join(f"{k} {metrics[k]:.6g}" for k in (schema.FID, schema.FID_INF, schema.KID_MEAN) if k in metrics)
    click.echo(f"{name} on {dataset}: {shown} (run {run_id}, family external)")
    click.echo(f"report: bench report --suite {suite}")


@click.command()
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
    from bench.tools.external import SampleError, draw, write_samples

    if out.suffix not in (".png", ".npz", ".npy"):
        fail(f"--out {out}: write .png (a grid), .npz or .npy (the uint8 array)")
    try:
        uri = tracking.resolve_uri(tracking_uri, results())
        tracking.check_reachable(uri)
        samples = draw(uri, run_id, n, seed, checkpoint, batch_size, resolve_device(device))
        what = write_samples(samples, out)
    except (SampleError, tracking.TrackingError) as e:
        fail(str(e))
    click.echo(f"{out}: {what} from run {run_id} ({checkpoint} model, seed {seed})")


@click.command(name="check-model")
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

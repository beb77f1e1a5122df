"""The `bench` command line: run, list, report, ui, perf."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import click

from bench import config, schema
from bench.config import DEFAULT_CONFIG, ConfigError

EXIT_USAGE = 2  # bad input: nothing was started
EXIT_FAILED_CELLS = 1  # the suite ran, some cells FAILED (the summary says which)


def _results() -> Path:
    return Path(os.environ.get("BENCH_RESULTS", "results"))


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _load(config_path: str, overrides: tuple[str, ...] = (), suite: str | None = None):
    try:
        cfg = config.load(config_path, overrides, suite)
        if suite is not None:
            cfg.suite(suite)
        return cfg
    except ConfigError as e:
        _fail(str(e))


config_option = click.option(
    "--config", "config_path", default=DEFAULT_CONFIG, show_default=True, help="The suite configuration file."
)
uri_option = click.option(
    "--tracking-uri",
    default=None,
    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///results/mlflow.db).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="genbench", prog_name="bench")
def main() -> None:
    """genbench: train and evaluate GAN and VAE baselines over a matrix of datasets × models × seeds, with every
    number logged to MLflow alongside its evaluation protocol."""


@main.command()
@click.option("--suite", required=True, help="Suite name from bench.toml (see `bench list`).")
@uri_option
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set train.steps=500 --set seeds=[0] --set models.gan-mlp.lr=1e-4.",
)
@click.option(
    "--executor",
    type=click.Choice(config.EXECUTORS),
    default="local",
    show_default=True,
    help="local: each cell in its own process (a crash stays in its cell); inline: cells in this process "
    "(debugging); ray: each cell a Ray task (pip install 'genbench[ray]').",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDR",
    help="Ray cluster to join (e.g. ray://head:10001); default: a local Ray instance. A remote cluster needs "
    "--tracking-uri http://...",
)
@click.option(
    "--cells-per-gpu",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Cells run at once on the device: local: that many worker processes sharing it; ray: 1/N of a GPU per "
    "cell. Small models leave most of a GPU idle; the summary reports the aggregate throughput.",
)
@click.option("--no-progress", is_flag=True, help="No progress bars (log lines only).")
@click.option("--dry-run", is_flag=True, help="Print each cell, its bench.cell hash and what would happen to it.")
@config_option
def run(
    suite: str,
    tracking_uri: str | None,
    overrides: tuple[str, ...],
    executor: str,
    ray_address: str | None,
    cells_per_gpu: int,
    no_progress: bool,
    dry_run: bool,
    config_path: str,
) -> None:
    """Train and evaluate every cell of a suite; log everything to MLflow."""
    cfg = _load(config_path, overrides, suite)
    from bench.data import DataError
    from bench.eval.encoders import ExtractorError
    from bench.run.suite import plan_suite, run_suite
    from bench.tracking import TrackingError

    if dry_run:
        try:
            plan = plan_suite(cfg, suite, tracking_uri=tracking_uri, results=_results())
        except (ConfigError, DataError, TrackingError) as e:
            _fail(str(e))
        click.echo(f"suite {suite}: {len(plan)} cells (dry run: nothing is trained or logged)")
        for i, (cell, key, action) in enumerate(plan, 1):
            click.echo(f"  [{i}/{len(plan)}] {cell.name:<32} {key}  {action}")
        return

    try:
        outcomes = run_suite(
            cfg,
            suite,
            tracking_uri=tracking_uri,
            results=_results(),
            overrides=overrides,
            executor=executor,
            ray_address=ray_address,
            progress=not no_progress,
            echo=click.echo,
            cells_per_gpu=cells_per_gpu,
        )
    except (ConfigError, DataError, ExtractorError, TrackingError) as e:
        _fail(str(e))
    except KeyboardInterrupt:
        click.echo("interrupted: the running cell is marked KILLED; run the same command again to resume", err=True)
        sys.exit(130)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("FINISHED", "SKIPPED", "FAILED")}
    click.echo(
        f"done: {counts['FINISHED']} finished, {counts['SKIPPED']} skipped (already finished), "
        f"{counts['FAILED']} failed"
    )
    for o in outcomes:
        if o.status == "FAILED":
            click.echo(f"  FAILED {o.cell.name} (run {o.run_id}): {o.error}", err=True)
    click.echo(f"report: bench report --suite {suite}")
    if counts["FAILED"]:
        sys.exit(EXIT_FAILED_CELLS)


@main.command()
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
        _fail(
            f"unknown model(s) {unknown} / shape(s) {bad_shapes}; models: {', '.join(baselines.MODELS)}; "
            f"shapes: {', '.join(perf_mod.SHAPES)}"
        )
    try:
        dev = resolve_device(device)
    except ConfigError as e:
        _fail(str(e))
    speed = {"precision": precision, "channels_last": channels_last, "compile": compile_, "tf32": tf32,
             "cuda_graph": cuda_graph}  # fmt: skip
    try:
        speeds = [perf_mod.parse_variant(v) for v in variants] if variants else [perf_mod.parse_variant("")]
    except ValueError as e:
        _fail(str(e))
    if not variants:
        speeds = [speed]
        if compile_ and cuda_graph:
            _fail("--compile and --cuda-graph cannot be combined; choose one of the two")
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
    uri = tracking.resolve_uri(tracking_uri, _results())
    params = {
        "device": str(dev),
        "steps": steps,
        "batch_size": batch_size,
        "threads": __import__("torch").get_num_threads(),
        "repeats": repeats,
        **(speeds[0] if len(speeds) == 1 else {"variants": "; ".join(perf_mod.speed_label(s) for s in speeds)}),
    }
    run_id = perf_mod.log(uri, rows, overhead, params, text, _results())
    click.echo(f"logged to MLflow experiment perf (run {run_id}) at {uri}")


@main.command(name="list")
@config_option
def list_(config_path: str) -> None:
    """Show the suites, models and datasets."""
    cfg = _load(config_path)
    import baselines
    from bench.data import DATASETS

    click.echo("suites:")
    for name, s in cfg.suites.items():
        n = len(s.datasets) * len(s.models) * len(s.seeds)
        click.echo(
            f"  {name:<12} {n:>3} cells  datasets={','.join(s.datasets)}  models={','.join(s.models)}  "
            f"seeds={','.join(map(str, s.seeds))}  steps={s.train.steps}  extractor={s.eval.extractor}"
        )
        if s.description:
            click.echo(f"  {'':<12} {s.description}")
    click.echo("models:")
    for name, cls in baselines.models().items():
        doc = ((sys.modules[cls.__module__].__doc__ or cls.__doc__ or "").strip().splitlines() or [""])[0]
        click.echo(f"  {name:<12} {cls.family}  {doc}")
        if name not in baselines.MODELS:
            click.echo(f"  {'':<12}      plugin: {baselines.source(name)}")
    click.echo("datasets:")
    for name, loader in DATASETS.items():
        click.echo(f"  {name:<14} {(loader.__doc__ or '').strip().splitlines()[0] if loader.__doc__ else ''}")


@main.command(name="eval")
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
    cfg = _load(config_path, overrides, suite)
    s = cfg.suite(suite)
    if dataset not in s.datasets:
        _fail(f"dataset {dataset!r} is not in suite {suite!r} (its datasets: {', '.join(s.datasets)})")
    if not name.strip() or name in cfg.models or name == schema.REAL_MODEL:
        _fail(f"--name {name!r}: give a label of your own, not empty and not a model or '{schema.REAL_MODEL}'")
    from bench import tracking
    from bench.data import DataError, load
    from bench.devices import resolve_device
    from bench.eval.encoders import ExtractorError
    from bench.eval.metrics import MetricError
    from bench.tools.external import SampleError, score_and_log

    try:
        data = load(dataset)
        uri = tracking.resolve_uri(tracking_uri, _results())
        run_id, metrics = score_and_log(
            cfg, suite, data, samples_path, name, uri, _results(), resolve_device(s.train.device), click.echo
        )
    except (SampleError, DataError, ExtractorError, MetricError, tracking.TrackingError) as e:
        _fail(str(e))
    shown = ", ".join(f"{k} {metrics[k]:.6g}" for k in (schema.FID, schema.FID_INF, schema.KID_MEAN) if k in metrics)
    click.echo(f"{name} on {dataset}: {shown} (run {run_id}, family external)")
    click.echo(f"report: bench report --suite {suite}")


@main.command()
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
        _fail(f"--out {out}: write .png (a grid), .npz or .npy (the uint8 array)")
    try:
        uri = tracking.resolve_uri(tracking_uri, _results())
        tracking.check_reachable(uri)
        samples = draw(uri, run_id, n, seed, checkpoint, batch_size, resolve_device(device))
        what = write_samples(samples, out)
    except (SampleError, tracking.TrackingError) as e:
        _fail(str(e))
    click.echo(f"{out}: {what} from run {run_id} ({checkpoint} model, seed {seed})")


@main.command(name="check-model")
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
    _load(config_path)  # registers the plugins of bench.toml and of installed packages
    import baselines
    from bench.tools.check_model import check

    if name not in baselines.models():
        _fail(f"unknown model {name!r}; known models: {', '.join(baselines.models())}")
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


@main.command()
@click.option("--suite", required=True, help="Suite (= MLflow experiment) to report on.")
@uri_option
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output directory [results/reports/SUITE].")
@click.option(
    "--checkpoint",
    type=click.Choice(list(schema.CHECKPOINTS)),
    default="final",
    show_default=True,
    help="Report the final checkpoint's metrics, or the best checkpoint's (lowest periodic FID in training).",
)
@config_option
def report(suite: str, tracking_uri: str | None, out: str | None, checkpoint: str, config_path: str) -> None:
    """Write the suite's leaderboard (markdown, HTML, CSV and figures) from the tracking store."""
    cfg = _load(config_path, suite=suite)
    from bench import tracking
    from bench.report.files import write_report

    uri = tracking.resolve_uri(tracking_uri, _results())
    out_dir = Path(out) if out else _results() / "reports" / suite
    try:
        paths = write_report(uri, suite, out_dir, checkpoint, cfg.references)
        parent = tracking.attach_report(uri, suite, list(paths.values()), root=out_dir)
    except tracking.TrackingError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot write the report to {out_dir} ({e.strerror or type(e).__name__}); choose another --out")
    click.echo(paths["markdown"].read_text())
    for name, path in paths.items():
        if not name.startswith("figure:"):
            click.echo(f"wrote {path}")
    figures = [p for name, p in paths.items() if name.startswith("figure:")]
    if figures:
        click.echo(f"wrote {len(figures)} figures to {figures[0].parent}")
    if parent:
        click.echo(f"attached to parent run {parent}")


@main.command()
@uri_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--suite", default=None, help="Print the link to this suite's training-runs table.")
def ui(tracking_uri: str | None, host: str, port: int, suite: str | None) -> None:
    """Serve the MLflow UI on the suite's tracking store (or, for a tracking server, print its address)."""
    import signal

    from bench import tracking

    uri = tracking.resolve_uri(tracking_uri, _results())
    try:
        tracking.check_reachable(uri)
    except tracking.TrackingError as e:
        _fail(str(e))
    if uri.startswith(("http://", "https://")):  # a server already serves its own UI: nothing to start
        click.echo(f"the tracking store is an MLflow server; its UI: {_runs_url(uri.rstrip('/'), uri, suite)}")
        return
    if not tracking.store_exists(uri):
        _fail(f"no tracking store at {uri}; run `bench run --suite quick` first or pass --tracking-uri")
    with socket.socket() as s:
        if s.connect_ex((host, port)) == 0:
            _fail(f"port {port} on {host} is in use; choose another with --port")
    proc = tracking.serve_ui(uri, host, port)
    click.echo(f"MLflow UI for {uri} at {_runs_url(f'http://{host}:{port}', uri, suite)}  (Ctrl-C to stop)")

    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # a `kill` of bench ui stops the server it started, as Ctrl-C does
    try:
        sys.exit(proc.wait())
    except KeyboardInterrupt:
        tracking.stop_ui(proc)


def _runs_url(base: str, uri: str, suite: str | None) -> str:
    """The suite's training-runs table (MLflow 3 opens an experiment on its GenAI overview otherwise)."""
    from bench import tracking

    if suite is None:
        return base
    experiment_id = tracking.experiment_id(uri, suite)
    if experiment_id is None:
        _fail(f"no experiment {suite!r} in {uri}; run `bench run --suite {suite}` first")
    return f"{base}/#/experiments/{experiment_id}/runs"

"""The suite commands: `bench run`, `bench sweep`, `bench list`, `bench report`, `bench ui`, `bench init`."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import click

from bench import config, schema
from bench.cli.common import (
    EXIT_FAILED_CELLS,
    complete_suites,
    config_option,
    fail,
    load_config,
    results,
    uri_option,
)
from bench.config import ConfigError


@click.command(short_help="Train and evaluate a suite, logged to MLflow.")
@click.option(
    "--suite", shell_complete=complete_suites, required=True, help="Suite name from bench.toml (see `bench list`)."
)
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
    cfg = load_config(config_path, overrides, suite)
    from bench.data import DataError
    from bench.eval.encoders import EncoderError
    from bench.run.suite import plan_suite, run_suite
    from bench.tracking import StoreUnreachable, TrackingError

    if dry_run:
        try:
            plan = plan_suite(cfg, suite, tracking_uri=tracking_uri, results=results())
        except (ConfigError, DataError, TrackingError) as e:
            fail(str(e))
        click.echo(f"suite {suite}: {len(plan)} cells (dry run: nothing is trained or logged)")
        for i, p in enumerate(plan, 1):
            estimate = f"  (~{p.seconds:.0f} s, from {p.basis} finished cell(s) of its variant)" if p.seconds else ""
            click.echo(f"  [{i}/{len(plan)}] {p.cell.name:<32} {p.key}  {p.action}{estimate}")
        to_run = [p for p in plan if not p.action.startswith(("skip", "running elsewhere"))]
        known = [p.seconds for p in to_run if p.seconds is not None]
        if known:
            unknown = len(to_run) - len(known)
            click.echo(
                f"estimated time: ~{sum(known) / 60:.1f} min for {len(known)} of the {len(to_run)} cells to run, one "
                "at a time, from finished cells of their variants"
                + (f"; {unknown} have no finished cell of their variant to estimate from" if unknown else "")
            )
        return

    try:
        outcomes = run_suite(
            cfg,
            suite,
            tracking_uri=tracking_uri,
            results=results(),
            overrides=overrides,
            executor=executor,
            ray_address=ray_address,
            progress=not no_progress,
            echo=click.echo,
            cells_per_gpu=cells_per_gpu,
        )
    except StoreUnreachable as e:  # not bad input: the cells are unfinished, as failed ones are
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_FAILED_CELLS)
    except (ConfigError, DataError, EncoderError, TrackingError) as e:
        fail(str(e))
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


@click.command(short_help="Tune every model with the same budget.")
@click.option(
    "--suite",
    shell_complete=complete_suites,
    required=True,
    help="Suite whose models, data, schedule and protocol the sweep uses.",
)
@uri_option
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set sweep.trials=16 --set train.steps=500.")  # fmt: skip
@click.option("--executor", type=click.Choice(config.EXECUTORS), default="local", show_default=True,
              help="As for bench run: local, inline or ray.")  # fmt: skip
@click.option("--ray-address", default=None, metavar="ADDR", help="Ray cluster to join (as for bench run).")
@click.option("--cells-per-gpu", type=click.IntRange(1), default=1, show_default=True,
              help="Trials (and retrained cells) run at once on the device.")  # fmt: skip
@click.option("--no-progress", is_flag=True, help="No progress bars (log lines only).")
@click.option("--dry-run", is_flag=True, help="Print each trial's drawn configuration and what would happen to it.")
@config_option
def sweep(
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
    """Tune every model of a suite with the same budget (Lucic et al. 2018), retrain the winners over the suite's
    seeds, and write the budget figure and the leaderboard.

    Each model tries sweep.trials configurations drawn from its [models.NAME.search] space (a seeded sampler: the
    same command draws the same configurations); each trial is scored on the validation split; the best is retrained
    over the suite's seeds under the full protocol. A killed sweep resumes: run the same command again."""
    cfg = load_config(config_path, overrides, suite)
    from bench.data import DataError
    from bench.eval.encoders import EncoderError
    from bench.run.sweep import plan_sweep, run_sweep
    from bench.tracking import TrackingError

    if dry_run:
        try:
            plan = plan_sweep(cfg, suite, tracking_uri=tracking_uri, results=results())
        except (ConfigError, DataError, TrackingError) as e:
            fail(str(e))
        click.echo(f"sweep of suite {suite}: {len(plan)} trials (dry run: nothing is trained or logged)")
        for i, p in enumerate(plan, 1):
            drawn = ", ".join(
                f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in p.trial.values.items()
            )
            click.echo(f"  [{i}/{len(plan)}] {p.cell.name:<30} {drawn}  {p.key}  {p.action}")
        click.echo(f"then: the best trial of each model retrained over seeds {list(cfg.suite(suite).seeds)}")
        return
    try:
        outcome = run_sweep(
            cfg, suite, tracking_uri=tracking_uri, results=results(), overrides=overrides, executor=executor,
            ray_address=ray_address, progress=not no_progress, echo=click.echo, cells_per_gpu=cells_per_gpu,
        )  # fmt: skip
    except (ConfigError, DataError, EncoderError, TrackingError) as e:
        fail(str(e))
    except KeyboardInterrupt:
        click.echo("interrupted: run the same command again to resume (finished trials are kept)", err=True)
        sys.exit(130)
    trials, retrained = outcome.trials, outcome.retrained
    count = {s: sum(o.status == s for o in trials) for s in ("FINISHED", "SKIPPED", "FAILED")}
    click.echo(
        f"trials: {count['FINISHED']} run, {count['SKIPPED']} already finished, {count['FAILED']} failed; "
        f"retrained: {sum(o.status in ('FINISHED', 'SKIPPED') for o in retrained)} of {len(retrained)} cells "
        f"in {outcome.wall:.0f} s"
    )
    _write_sweep_report(cfg, suite, tracking_uri, None)
    if any(o.status == "FAILED" for o in retrained):
        sys.exit(EXIT_FAILED_CELLS)


def _write_sweep_report(cfg, suite: str, tracking_uri: str | None, out: str | None) -> None:
    from bench import tracking
    from bench.report.sweep import write_sweep_report

    uri = tracking.resolve_uri(tracking_uri, results())
    out_dir = Path(out) if out else results() / "reports" / schema.sweep_experiment(suite)
    try:
        paths = write_sweep_report(uri, suite, out_dir, cfg.published, cfg.suite(suite).sweep.bootstrap)
        tracking.attach_report(uri, schema.sweep_experiment(suite), list(paths.values()), root=out_dir)
    except tracking.TrackingError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write the report to {out_dir} ({e.strerror or type(e).__name__}); choose another --out")
    click.echo(paths["sweep"].read_text())
    click.echo(f"wrote {paths['sweep']}, {paths['sweep_html'].name}, {paths['sweep_csv'].name}, "
               f"{paths['protocol'].name} and the retrained leaderboard ({paths['markdown'].name})")  # fmt: skip


@click.command(name="list", short_help="List suites, models and datasets.")
@config_option
def list_(config_path: str) -> None:
    """Show the suites, models and datasets."""
    cfg = load_config(config_path)
    import baselines
    from bench.data import DATASETS

    click.echo("suites:")
    for name, s in cfg.suites.items():
        n = len(s.datasets) * len(s.models) * len(s.seeds)
        click.echo(
            f"  {name:<12} {n:>3} cells  datasets={','.join(s.datasets)}  models={','.join(s.models)}  "
            f"seeds={','.join(map(str, s.seeds))}  steps={s.train.steps}  encoder={s.eval.encoder}"
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


@click.command(short_help="Write and print the suite's leaderboard.")
@click.option(
    "--suite", shell_complete=complete_suites, required=True, help="Suite (= MLflow experiment) to report on."
)
@uri_option
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Output directory [results/reports/SUITE].")
@click.option(
    "--checkpoint",
    type=click.Choice(list(schema.CHECKPOINTS)),
    default="final",
    show_default=True,
    help="Report the final checkpoint's metrics, or the best checkpoint's (lowest periodic FID in training).",
)
@click.option("--sweep", "of_sweep", is_flag=True, help="The report of the suite's sweep (bench sweep): budget "
              "figure, chosen configurations, retrained leaderboard [results/reports/SUITE-sweep].")  # fmt: skip
@config_option
def report(
    suite: str, tracking_uri: str | None, out: str | None, checkpoint: str, of_sweep: bool, config_path: str
) -> None:
    """Write the suite's leaderboard (markdown, HTML, CSV and figures) from the tracking store."""
    cfg = load_config(config_path, suite=suite)
    if of_sweep:
        _write_sweep_report(cfg, suite, tracking_uri, out)
        return
    from bench import tracking
    from bench.report.files import write_report

    uri = tracking.resolve_uri(tracking_uri, results())
    out_dir = Path(out) if out else results() / "reports" / suite
    try:
        paths = write_report(uri, suite, out_dir, checkpoint, cfg.published)
        parent = tracking.attach_report(uri, suite, list(paths.values()), root=out_dir)
    except tracking.TrackingError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write the report to {out_dir} ({e.strerror or type(e).__name__}); choose another --out")
    click.echo(paths["text"].read_text())
    for name, path in paths.items():
        if not name.startswith("figure:") and name != "text":
            click.echo(f"wrote {path}")
    figures = [p for name, p in paths.items() if name.startswith("figure:")]
    if figures:
        click.echo(f"wrote {len(figures)} figures to {figures[0].parent}")
    if parent:
        click.echo(f"attached to parent run {parent}")


@click.command(short_help="Open the MLflow UI on the store.")
@uri_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=5000, show_default=True)
@click.option(
    "--suite", shell_complete=complete_suites, default=None, help="Print the link to this suite's training-runs table."
)
def ui(tracking_uri: str | None, host: str, port: int, suite: str | None) -> None:
    """Serve the MLflow UI on the suite's tracking store (or, for a tracking server, print its address)."""
    import signal

    from bench import tracking

    uri = tracking.resolve_uri(tracking_uri, results())
    try:
        tracking.check_reachable(uri)
    except tracking.TrackingError as e:
        fail(str(e))
    if uri.startswith(("http://", "https://")):  # a server already serves its own UI: nothing to start
        click.echo(f"the tracking store is an MLflow server; its UI: {_runs_url(uri.rstrip('/'), uri, suite)}")
        return
    if not tracking.store_exists(uri):
        fail(f"no tracking store at {uri}; run `bench run --suite quick` first or pass --tracking-uri")
    with socket.socket() as s:
        if s.connect_ex((host, port)) == 0:
            fail(f"port {port} on {host} is in use; choose another with --port")
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
        fail(f"no experiment {suite!r} in {uri}; run `bench run --suite {suite}` first")
    return f"{base}/#/experiments/{experiment_id}/runs"


@click.command(short_help="Write the default bench.toml here.")
@click.option("--force", is_flag=True, help="Overwrite an existing ./bench.toml.")
def init(force: bool) -> None:
    """Write genbench's default bench.toml into this folder, to edit (bench then reads it from here)."""
    from importlib.resources import files

    target = Path(config.DEFAULT_CONFIG)
    if target.exists() and not force:
        fail(f"{target.resolve()} exists already; edit it, or pass --force to replace it with the default")
    target.write_text((files("bench") / config.DEFAULT_CONFIG).read_text())
    click.echo(f"wrote {target.resolve()}: edit its suites, then `bench run --suite quick`")

"""What every `bench` command shares: the results folder, one-line errors, loading bench.toml, common options."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from bench import config
from bench.config import DEFAULT_CONFIG, ConfigError

EXIT_USAGE = 2  # bad input: nothing was started
EXIT_FAILED_CELLS = 1  # the suite ran, some cells FAILED (the summary says which)


def results() -> Path:
    return Path(os.environ.get("BENCH_RESULTS", "results"))


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def load_config(config_path: str | None, overrides: tuple[str, ...] = (), suite: str | None = None):
    try:
        cfg = config.load(config_path, overrides, suite)
        if suite is not None:
            cfg.suite(suite)
        return cfg
    except ConfigError as e:
        fail(str(e))


def complete_suites(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of --suite: the suites of the configuration this command would read."""
    try:
        names = config.load(ctx.params.get("config_path")).suites
    except Exception:  # completion must never print an error into the user's shell
        return []
    return [name for name in names if name.startswith(incomplete)]


def complete_datasets(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    from bench.data import DATASETS

    return [name for name in DATASETS if name.startswith(incomplete)]


def complete_models(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of a comma-separated --models: the baselines and installed plugins after the last comma."""
    import baselines

    done, _, last = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    return [prefix + name for name in baselines.models() if name.startswith(last)]


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),  # a missing file is bench.config's one-line error, which names the suites' file
    default=None,
    help=f"The suite configuration file [./{DEFAULT_CONFIG} if there is one, else genbench's default; `bench init` "
    "writes a copy to edit].",
)
uri_option = click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    show_envvar=True,
    default=None,
    help="MLflow tracking URI [default: sqlite:///results/mlflow.db].",
)

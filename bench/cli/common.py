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

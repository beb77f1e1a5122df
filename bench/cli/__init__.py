"""The `bench` command line. Every command turns bad input into a one-line error (exit 2) within seconds.

bench run | sweep | list | report | ui | init    the suites (bench/cli/suite.py)
bench perf | eval | sample | check-model  the tools (bench/cli/tools.py)
"""

from __future__ import annotations

import sys
import traceback

import click

from bench.cli import suite, tools

CRASHED = 3  # genbench itself failed (a bug): not 1 (some cells failed) nor 2 (bad input)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="genbench", prog_name="bench")
def main() -> None:
    """genbench: train and evaluate GAN and VAE baselines over a matrix of datasets × models × seeds, with every
    number logged to MLflow alongside its evaluation protocol."""
    from bench.tracking.store import quiet_mlflow

    quiet_mlflow()  # the command's output is genbench's; a library call leaves the user's logging alone


for command in (
    suite.run,
    suite.sweep,
    suite.list_,
    suite.report,
    suite.ui,
    suite.init,
    tools.perf,
    tools.eval_,
    tools.sample,
    tools.check_model,
):
    main.add_command(command)


def entry() -> None:
    """The `bench` executable: `main`, with an unexpected exception (a bug in genbench, not bad input) reported as
    such, its traceback kept for the bug report, and exit code 3."""
    try:
        main(prog_name="bench")
    except Exception as e:  # SystemExit and KeyboardInterrupt pass through: click's own exit codes stand
        traceback.print_exc()
        click.echo(
            f"bench crashed: {type(e).__name__}: {e}. This is a bug in genbench, not in your input; please report "
            "it with the traceback above.",
            err=True,
        )
        sys.exit(CRASHED)

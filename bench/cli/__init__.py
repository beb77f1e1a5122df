"""The `bench` command line. Every command turns bad input into a one-line error (exit 2) within seconds.

bench run | sweep | list | report | ui | init    the suites (bench/cli/suite.py)
bench perf | eval | sample | check-model  the tools (bench/cli/tools.py)
"""

from __future__ import annotations

import click

from bench.cli import suite, tools


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="genbench", prog_name="bench")
def main() -> None:
    """genbench: train and evaluate GAN and VAE baselines over a matrix of datasets × models × seeds, with every
    number logged to MLflow alongside its evaluation protocol."""


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

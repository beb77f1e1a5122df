"""`python -m bench ...`: the `bench` command without its console script (e.g. from a source checkout)."""

from bench.cli import entry

entry()

"""Executors run the cells of a suite. The runner records each cell's outcome in its own run, so one cell's failure
never stops the others.

- `local` (default): cells one after another on this machine, each in its own spawned process: an exception, a
  NaN, an out-of-memory kill or a segfault in one cell is recorded FAILED and the suite goes on.
- `inline`: cells in this process (for debugging with pdb, and for tests that patch the code under test).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


class LocalExecutor:
    """Cells in order on this machine's device, each in a fresh process."""

    isolate = True

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> list[Any]:
        return [fn(job) for job in jobs]


class InlineExecutor(LocalExecutor):
    """Cells in order inside this process."""

    isolate = False


EXECUTORS = {
    "local": LocalExecutor,
    "inline": InlineExecutor,
}

"""Executors run the cells of a suite. `local` runs them one after another in this process; the runner records
each cell's failure in its own run, so one cell's exception never stops the others."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


class LocalExecutor:
    """Cells in order, in this process, on this machine's device."""

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> list[Any]:
        return [fn(job) for job in jobs]


EXECUTORS = {
    "local": LocalExecutor,
}

"""Executors run the cells of a suite. The runner records each cell's outcome in its own run, so one cell's failure
never stops the others.

- `local` (default): cells one after another on this machine, each in its own spawned process: an exception, a
  NaN, an out-of-memory kill or a segfault in one cell is recorded FAILED and the suite goes on.
- `inline`: cells in this process (for debugging with pdb, and for tests that patch the code under test).
- `ray`: each cell a Ray task on a local or remote cluster (`--ray-address`), as many at once as the cluster has
  CPUs (or GPUs, when it has them). Ray is an optional extra (`pip install genbench[ray]`), imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.config import ConfigError


class LocalExecutor:
    """Cells in order on this machine's device, each in a fresh process."""

    mode = "process"

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> list[Any]:
        return [fn(job) for job in jobs]


class InlineExecutor(LocalExecutor):
    """Cells in order inside this process."""

    mode = "inline"


class RayExecutor:
    """Cells as Ray tasks. The driver (this process) creates each cell's MLflow run; the task trains, evaluates
    and logs into it, exactly as a local worker process does."""

    mode = "ray"

    def __init__(self, address: str | None = None, tracking_uri: str = ""):
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "the ray executor needs Ray: pip install 'genbench[ray]' (or: pip install 'ray>=2.60')"
            ) from None
        remote = address not in (None, "", "local")
        if remote and not tracking_uri.startswith(("http://", "https://", "databricks")):
            raise ConfigError(
                f"a remote Ray cluster ({address}) cannot write to this machine's tracking store {tracking_uri}; "
                "start an MLflow server and pass --tracking-uri http://HOST:PORT (or set MLFLOW_TRACKING_URI)"
            )
        self.ray = ray
        if not ray.is_initialized():
            if remote:
                ray.init(address=address, include_dashboard=False, log_to_driver=True)
            else:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True)
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        self.slots = max(1, self.gpus or int(resources.get("CPU", 1)))

    def task(self, fn: Callable[[dict], dict]):
        """`fn` as a Ray task: one GPU each when the cluster has GPUs (never asked for on a cluster without, where
        such a task would never start), otherwise one CPU."""
        return self.ray.remote(num_gpus=1, num_cpus=1)(fn) if self.gpus else self.ray.remote(num_cpus=1)(fn)

    def map(self, fn: Callable[[Any], Any], jobs: Iterable[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=self.slots) as pool:  # each thread waits on one task at a time
            return list(pool.map(fn, jobs))


EXECUTORS = {
    "local": LocalExecutor,
    "inline": InlineExecutor,
    "ray": RayExecutor,
}

"""Executors run the cells of a suite. The runner records each cell's outcome in its own run, so one cell's failure
never stops the others.

- `local` (default): cells on this machine, each in its own spawned process: an exception, a NaN, an out-of-memory
  kill or a segfault in one cell is recorded FAILED and the suite goes on. One cell at a time, or `cells_per_gpu`
  at once sharing the device (small models leave most of a GPU idle: several processes fill it).
- `inline`: cells in this process (for debugging with pdb, and for tests that patch the code under test).
- `ray`: each cell a Ray task on a local or remote cluster (`--ray-address`), as many at once as the cluster has
  CPUs (or GPUs, when it has them). Ray is an optional extra (`pip install genbench[ray]`), imported only here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

from bench.config import ConfigError


class LocalExecutor:
    """Cells on this machine's device, each in a fresh process: in order, or `cells_per_gpu` at once (each waited
    on by a thread of this process). `on_interrupt`, called when a Ctrl-C or SIGTERM reaches this process while
    several cells run, asks every running cell to stop (they checkpoint and report KILLED); the interrupt is
    raised once all have ended."""

    mode = "process"

    def __init__(self, cells_per_gpu: int = 1):
        if cells_per_gpu < 1:
            raise ConfigError(f"--cells-per-gpu must be at least 1, got {cells_per_gpu}")
        self.cells_per_gpu = cells_per_gpu

    def map(
        self, fn: Callable[[Any], Any], jobs: Iterable[Any], on_interrupt: Callable[[], None] | None = None
    ) -> list[Any]:
        jobs = list(jobs)
        if self.cells_per_gpu == 1 or len(jobs) <= 1:
            return [fn(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=self.cells_per_gpu) as pool:
            futures = [pool.submit(fn, job) for job in jobs]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)  # a KeyboardInterrupt in a cell's thread too
                if any(isinstance(f.exception(), KeyboardInterrupt) for f in done if f.done()):
                    raise KeyboardInterrupt("a cell was interrupted")
            except KeyboardInterrupt:
                for f in futures:
                    f.cancel()  # cells not started yet never start
                if on_interrupt is not None:
                    on_interrupt()
                wait(futures)
                raise
            return [f.result() for f in futures]


class InlineExecutor(LocalExecutor):
    """Cells in order inside this process."""

    mode = "inline"

    def __init__(self, cells_per_gpu: int = 1):
        if cells_per_gpu != 1:
            raise ConfigError("--cells-per-gpu needs the local or ray executor (inline runs one cell at a time)")
        super().__init__(1)


class RayExecutor:
    """Cells as Ray tasks. The driver (this process) creates each cell's MLflow run; the task trains, evaluates
    and logs into it, exactly as a local worker process does."""

    mode = "ray"

    def __init__(self, address: str | None = None, tracking_uri: str = "", cells_per_gpu: int = 1):
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
        if cells_per_gpu < 1:
            raise ConfigError(f"--cells-per-gpu must be at least 1, got {cells_per_gpu}")
        self.ray, self.cells_per_gpu = ray, cells_per_gpu
        if not ray.is_initialized():
            if remote:
                ray.init(address=address, include_dashboard=False, log_to_driver=True)
            else:
                ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True)
        resources = ray.cluster_resources()
        self.gpus = int(resources.get("GPU", 0))
        self.slots = max(1, self.gpus * cells_per_gpu or int(resources.get("CPU", 1)))

    def task(self, fn: Callable[[dict], dict]):
        """`fn` as a Ray task: 1/cells_per_gpu of a GPU each when the cluster has GPUs (never asked for on a cluster
        without, where such a task would never start), otherwise one CPU."""
        if self.gpus:
            return self.ray.remote(num_gpus=1 / self.cells_per_gpu, num_cpus=1)(fn)
        return self.ray.remote(num_cpus=1)(fn)

    def map(
        self, fn: Callable[[Any], Any], jobs: Iterable[Any], on_interrupt: Callable[[], None] | None = None
    ) -> list[Any]:
        with ThreadPoolExecutor(max_workers=self.slots) as pool:  # each thread waits on one task at a time
            return list(pool.map(fn, jobs))


EXECUTORS = {
    "local": LocalExecutor,
    "inline": InlineExecutor,
    "ray": RayExecutor,
}

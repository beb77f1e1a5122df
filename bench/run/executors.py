"""Executors run the cells of a suite, each behind one interface: `executor.run(job, ctx) -> Outcome` runs one
opened cell (a bench.run.cell.CellJob), and `executor.map(fn, items)` runs a suite's worth of them, as many at once as
the executor allows. The cell's own run records its outcome, so one cell's failure never stops the others.

- `local` (default): cells on this machine, each in its own spawned process: an exception, a NaN, an out-of-memory
  kill or a segfault in one cell is recorded FAILED and the suite goes on. One cell at a time, or `cells_per_gpu`
  at once sharing the device (small models leave most of a GPU idle: several processes fill it).
- `inline`: cells in this process (for debugging with pdb, and for tests that patch the code under test).
- `ray`: each cell a Ray task on a local or remote cluster (`--ray-address`), as many at once as the cluster has
  CPUs (or GPUs, when it has them). Ray is an optional extra (`pip install genbench[ray]`), imported only here.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from bench import schema, tracking
from bench.config import ConfigError
from bench.data import load as load_dataset
from bench.run import checkpoints
from bench.run.cell import CellContext, CellJob, Outcome, execute, prepare_real
from bench.run.interrupts import interrupt_on
from bench.run.matrix import Cell
from bench.storage import cache_dir


class LocalExecutor:
    """Cells on this machine's device in worker processes (spawned: CUDA-safe), so a crash, an out-of-memory kill
    or a segfault there cannot take the suite down: the run is recorded FAILED with how the process ended. In order,
    or `cells_per_gpu` at once (each waited on by a thread of this process).

    A worker lives on from cell to cell: it keeps the datasets and encoders it loaded, its imports and its CUDA
    context, which a fresh process per cell paid again every time (seconds per cell, more than training takes for
    a small model on a GPU). A worker whose cell FAILED is replaced before the next cell, so nothing a failure left
    behind (a broken CUDA context, say) reaches another cell.

    A Ctrl-C or SIGTERM that reaches this process while several cells run asks every running cell to stop (they
    checkpoint and report KILLED); the interrupt is raised once all have ended."""

    def __init__(self, cells_per_gpu: int = 1):
        if cells_per_gpu < 1:
            raise ConfigError(f"--cells-per-gpu must be at least 1, got {cells_per_gpu}")
        self.cells_per_gpu = cells_per_gpu
        self._workers: set[_Worker] = set()  # every live worker, so an interrupt reaches them all
        self._lock = threading.Lock()
        self._mine = threading.local()  # the worker of the calling thread

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        try:
            return self._map(fn, list(items))
        finally:
            self.close()

    def _map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        if self.cells_per_gpu == 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=self.cells_per_gpu) as pool:
            futures = [pool.submit(fn, item) for item in items]
            try:
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)  # a KeyboardInterrupt in a cell's thread too
                if any(isinstance(f.exception(), KeyboardInterrupt) for f in done if f.done()):
                    raise KeyboardInterrupt("a cell was interrupted")
            except KeyboardInterrupt:
                for f in futures:
                    f.cancel()  # cells not started yet never start
                self.stop_workers()
                wait(futures)
                raise
            return [f.result() for f in futures]

    def stop_workers(self) -> None:
        """Ask every worker to stop (SIGTERM: a cell finishes its step, checkpoints and reports KILLED)."""
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.signal(signal.SIGTERM)

    def close(self) -> None:
        """End every worker (after the suite, or an interrupt)."""
        with self._lock:
            workers, self._workers = list(self._workers), set()
        for worker in workers:
            worker.close()

    def _worker(self) -> _Worker:
        worker = getattr(self._mine, "worker", None)
        if worker is None or not worker.alive():
            worker = _Worker()
            self._mine.worker = worker
            with self._lock:
                self._workers.add(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        with self._lock:
            self._workers.discard(worker)
        self._mine.worker = None
        worker.close()

    def run(self, job: CellJob, ctx: CellContext) -> Outcome:
        cell, run = job.cell, job.run
        spec = detached_spec(job, ctx, self.cells_per_gpu)
        start = time.perf_counter()
        worker = self._worker()
        run.set_tags(tracking.owner_tags(worker.pid))
        try:
            report = worker.run(spec)
        except KeyboardInterrupt:
            # A Ctrl-C reached the worker too, a `kill` of this process did not: ask it to stop in any case (for a
            # worker already stopping, a repeated SIGTERM is the same request), then let it checkpoint and close
            # its run.
            worker.signal(signal.SIGTERM)
            worker.wait(120)
            self._retire(worker)
            _mark_killed(run)
            raise
        if report is not None:
            if report["status"] != "FINISHED":
                self._retire(worker)  # a fresh process for the next cell
            return outcome_from_report(cell, run, report)
        message = _describe_exit(worker.exitcode())
        self._retire(worker)
        if run.status() == "RUNNING":
            run.set_tags({schema.ERROR: message})
            run.log_text(
                f"{message}\n(the worker process of {cell.name} ended without reporting a result)\n",
                schema.ERROR_ARTIFACT,
            )
            run.end("FAILED")
        ctx.echo(f"{job.label} {cell.name}: FAILED — {message}")
        return Outcome(cell, "FAILED", run.run_id, message, seconds=time.perf_counter() - start)


class _Worker:
    """One spawned process that runs cells one after another, reached through a pipe: a spec in, a report out."""

    def __init__(self):
        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.proc = context.Process(target=_worker_loop, args=(child,), name="bench worker")
        self.proc.start()
        child.close()
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.is_alive()

    def run(self, spec: dict) -> dict | None:
        """The cell's report; None when the process ended without one (killed, crashed)."""
        try:
            self.conn.send(spec)
            while not self.conn.poll(0.5):
                if not self.proc.is_alive() and not self.conn.poll(0):
                    return None
            return self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return None

    def signal(self, sig: int) -> None:
        if self.proc.is_alive() and self.pid:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float) -> None:
        self.proc.join(timeout=timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=10)

    def exitcode(self) -> int | None:
        self.proc.join(timeout=10)
        return self.proc.exitcode

    def close(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(None)  # "no more cells"
            except (BrokenPipeError, OSError):
                pass
        self.wait(30)
        self.conn.close()


class InlineExecutor:
    """Cells in order inside this process (debugging with pdb; tests that patch the code under test)."""

    def __init__(self, cells_per_gpu: int = 1):
        if cells_per_gpu != 1:
            raise ConfigError("--cells-per-gpu needs the local or ray executor (inline runs one cell at a time)")

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        return [fn(item) for item in items]

    def run(self, job: CellJob, ctx: CellContext) -> Outcome:
        job.run.set_tags(tracking.owner_tags(os.getpid()))
        return execute(job, ctx)


class RayExecutor:
    """Cells as Ray tasks. The driver (this process) creates each cell's MLflow run; the task trains, evaluates
    and logs into it, exactly as a local worker process does; a task that dies (worker crash, node lost) is
    recorded FAILED like a dead process."""

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
        # custom Ray resources every cell task asks for (e.g. {"trainer": 1}: cells only on nodes started with it)
        self.resources = json.loads(os.environ.get("BENCH_RAY_RESOURCES", "{}")) or None
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
            return self.ray.remote(num_gpus=1 / self.cells_per_gpu, num_cpus=1, max_retries=RAY_RETRIES)(fn)
        return self.ray.remote(num_cpus=1, max_retries=RAY_RETRIES, resources=self.resources)(fn)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=self.slots) as pool:  # each thread waits on one task at a time
            return list(pool.map(fn, items))

    def run(self, job: CellJob, ctx: CellContext) -> Outcome:
        cell, run = job.cell, job.run
        device = "cuda" if self.gpus and cell.train.device != "cpu" else "cpu"
        spec = detached_spec(job, ctx, self.cells_per_gpu) | {"device": device, "threads": 1}
        run.set_tags({schema.EXECUTOR: "ray", **tracking.owner_tags(os.getpid())})  # a local cluster dies with us
        start = time.perf_counter()
        ref = self.task(run_detached_cell).remote(spec)
        try:
            out = self.ray.get(ref)
        except KeyboardInterrupt:
            self.ray.cancel(ref)
            _mark_killed(run)
            raise
        except Exception as e:  # ray.exceptions.RayTaskError / WorkerCrashedError / ...
            message = f"the cell's Ray task failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            if run.status() == "RUNNING":
                run.set_tags({schema.ERROR: message})
                run.end("FAILED")
            ctx.echo(f"{job.label} {cell.name}: FAILED — {message}")
            return Outcome(cell, "FAILED", run.run_id, message, seconds=time.perf_counter() - start)
        return outcome_from_report(cell, run, out)


RAY_RETRIES = 3  # a cell's task is run again when its node or worker dies (not on an exception in the cell)


EXECUTORS = {  # the names are bench.config.EXECUTORS (the CLI's choices, without importing torch)
    "local": LocalExecutor,
    "inline": InlineExecutor,
    "ray": RayExecutor,
}


def build_executor(name: str, cells_per_gpu: int, ray_address: str | None, tracking_uri: str):
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")
    if name == "ray":
        return RayExecutor(ray_address, tracking_uri, cells_per_gpu)
    return EXECUTORS[name](cells_per_gpu)


# ----------------------------------------------------------------------------- a cell away from the driver


def detached_spec(job: CellJob, ctx: CellContext, cells_at_once: int) -> dict:
    """What a worker process or Ray task needs to run the cell into the run the driver opened (picklable)."""
    return {
        "cell": job.cell,
        "key": job.key,
        "run_id": job.run.run_id,
        "uri": ctx.uri,
        "results": str(ctx.results.resolve()),
        "cache": os.environ.get("BENCH_CACHE"),  # the driver's, when set; else each node's own user cache
        "device": str(ctx.device),
        "progress": ctx.progress and cells_at_once == 1,  # several cells' bars would garble one terminal
        "label": job.label,
        "threads": max(1, torch.get_num_threads() // cells_at_once),
        "attempt": uuid.uuid4().hex,  # Ray runs a task again when its node dies: the retry sees this on the run
        "holder": job.holder,  # the claim the worker's lease checks (a Ray retry is the same claim)
    }


def run_detached_cell(spec: dict, loaded: dict | None = None) -> dict:
    """A cell away from the driver (a worker process, or a Ray task): rebuild what it needs (dataset, cached
    encoders; kept in `loaded` for the worker's next cells), run it into the run the driver created, return the
    outcome as a plain dict."""
    tracking.quiet_mlflow()  # a process of genbench's own (never the user's: the inline executor calls execute)
    torch.set_num_threads(spec["threads"])
    cell: Cell = spec["cell"]
    results, device = Path(spec["results"]), torch.device(spec["device"])
    loaded = {} if loaded is None else loaded
    if ("dataset", cell.dataset) not in loaded:
        loaded[("dataset", cell.dataset)] = load_dataset(cell.dataset, validation=cell.eval.validation_images)
    dataset = loaded[("dataset", cell.dataset)]
    cache = Path(spec["cache"]) if spec.get("cache") else cache_dir()
    real = prepare_real(
        dataset, cell.encoders(), cell.eval, cell.domain, cache, device, scoring=cell.eval.encoders, loaded=loaded
    )
    run = tracking.attach_run(spec["uri"], spec["run_id"])
    echo = functools.partial(print, flush=True)
    local = checkpoints.checkpoint_path(results, spec["key"])
    if tracking.is_remote(spec["uri"]):  # the newest copy wins: this node's, or the store's
        try:
            if run.fetch_resume_checkpoint(local, newer_than=checkpoints.step_of(local)):
                echo(f"{spec['label']} {cell.name}: on {socket.gethostname()}, its checkpoint from the tracking store")
        except tracking.TrackingError as e:
            echo(f"{spec['label']} {cell.name}: warning: {e}")
    if run.tag(schema.ATTEMPT) == spec["attempt"]:  # this very dispatch ran before: Ray retried it (a node died)
        echo(f"{spec['label']} {cell.name}: retried after its node or worker died; resuming from its checkpoint")
        run.count_resume()
    run.set_tags({schema.ATTEMPT: spec["attempt"]})
    ctx = CellContext({cell.dataset: dataset}, real, results, device, spec["uri"], spec["progress"], echo)
    try:
        outcome = execute(CellJob(cell, spec["key"], run, spec["label"], spec.get("holder", "")), ctx)
    except KeyboardInterrupt:
        return {"status": "KILLED", "error": "interrupted", "metrics": {}, "seconds": 0.0}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the next cell of this worker, or another worker on the device, gets it back
    return {"status": outcome.status, "error": outcome.error, "metrics": outcome.metrics, "seconds": outcome.seconds}


def outcome_from_report(cell: Cell, run: tracking.Run, out: dict) -> Outcome:
    """The Outcome a worker or Ray task reported (`run_detached_cell`); an interrupted cell stops the suite."""
    if out["status"] == "KILLED":
        raise KeyboardInterrupt(f"{cell.name} was interrupted")
    return Outcome(cell, out["status"], run.run_id, out["error"], out["metrics"], out["seconds"])


def _worker_loop(conn) -> None:
    """Entry point of a worker process: run the cells that arrive on `conn` (None: stop), report each as a dict,
    with the datasets and encoders loaded for one cell kept for the next. SIGINT and SIGTERM interrupt the cell
    (it checkpoints and reports KILLED, and the worker ends); a SIGTERM after the first signal is the same request
    (the suite's process forwards one after a Ctrl-C that reached both)."""
    loaded: dict = {}
    with interrupt_on(signal.SIGINT, signal.SIGTERM):
        try:
            while (spec := conn.recv()) is not None:
                report = run_detached_cell(spec, loaded)
                conn.send(report)
                if report["status"] == "KILLED":
                    return
        except (EOFError, KeyboardInterrupt):  # the suite's process is gone, or stopped us between cells
            return


def _mark_killed(run: tracking.Run) -> None:
    if run.status() == "RUNNING":
        run.set_tags({schema.ERROR: "interrupted; run the same command to resume"})
        run.end("KILLED")


def _describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        name = signal.Signals(-code).name
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"the cell's worker process was killed by {name}{hint}"
    return f"the cell's worker process exited with code {code} without reporting a result"

"""Who holds a cell's run: the owner tags a process writes (host, PID and the boot and PID namespace the PID is
valid in), the heartbeat that keeps its lease, and whether a RUNNING run's holder is still live."""

from __future__ import annotations

import functools
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bench import schema


def holder_of(run) -> Holder:
    """The holder of a RUNNING run and whether its lease is live."""
    tags = run.data.tags
    beat = float(tags.get(schema.HEARTBEAT, run.info.start_time / 1000))
    live = schema.lease_live(tags.get(schema.HEARTBEAT), run.info.start_time / 1000, time.time())
    host, pid = tags.get(schema.HOST, "?"), tags.get(schema.PID, "?")
    if live and pid_checkable_here(tags) and not pid_alive(int(pid)):
        live = False
    return Holder(run.info.run_id, host, pid, run.info.start_time, beat, live)


@dataclass(frozen=True)
class Holder:
    """A RUNNING run of a cell and the process holding it."""

    run_id: str
    host: str
    pid: str
    started: int  # the run's start time, ms
    heartbeat: float  # its last beat, unix seconds (its start before the first beat)
    live: bool

    def describe(self) -> str:
        since = time.strftime("%H:%M:%S", time.localtime(self.started / 1000))
        return f"host {self.host}, pid {self.pid}, since {since}, run {self.run_id}"


def owner_tags(pid: int) -> dict[str, str]:
    """Which process on which host runs a run: how a later `bench run` recognises runs orphaned by a kill."""
    return {schema.HOST: socket.gethostname(), schema.PID: str(pid), schema.PROCESS_SPACE: process_space()}


@functools.cache  # the same for the whole life of a process
def process_space() -> str:
    """The machine boot and PID namespace this process's PIDs mean something in. Two containers with host
    networking share a hostname but not their PIDs: a PID is looked up only where this matches."""
    parts = []
    for path, read in (("/proc/sys/kernel/random/boot_id", lambda p: Path(p).read_text().strip()),
                       ("/proc/self/ns/pid", os.readlink)):  # fmt: skip
        try:
            parts.append(read(path))
        except OSError:
            parts.append("?")
    return "/".join(parts)


def pid_checkable_here(tags: dict) -> bool:
    """Whether the run's owning PID can be looked up from this process: the same host, boot and PID namespace. A
    run without that record (another machine, a container, an older genbench) is judged by its heartbeat only."""
    return (
        tags.get(schema.HOST) == socket.gethostname()
        and tags.get(schema.PROCESS_SPACE) == process_space()
        and tags.get(schema.PID, "").isdigit()
    )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class LeaseLost(RuntimeError):
    """This process no longer holds the cell: another process took it over, or no beat got through for the lease's
    length (a paused process, an unreachable store). The holder stops without writing anything more to the run."""


class Lease:
    """The holder's side of a cell's lease, from the claim to the cell's end: a background thread beats
    (schema.HEARTBEAT) every `interval` seconds, and at each beat first reads the run back. The lease is lost when the
    run is no longer RUNNING or names another holder (schema.HOLDER: the random id of the process that claimed it
    last), or when no beat has got through for `lease_s` seconds by this process's own monotonic clock (a SIGSTOPped
    process, a suspended machine, a store away in MLflow's retry backoff): by then another process may have taken
    the cell over. `check()` raises LeaseLost; the training loop calls it at every step, and the cell before every
    write that matters (the final models, FINISHED)."""

    def __init__(self, client, run_id: str, holder: str, interval: float = schema.HEARTBEAT_S):
        import threading

        self.client, self.run_id, self.holder, self.interval = client, run_id, holder, interval
        self.lease_s = schema.LEASE_S
        self.reason: str | None = None
        self._last_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-heartbeat", daemon=True)

    def beat(self) -> None:
        """Read the run back, then beat if it is still this holder's; a failed call waits for the next beat."""
        try:
            run = self.client.get_run(self.run_id)
            if run.info.status != "RUNNING":
                self.reason = f"its run was marked {run.info.status} by another process"
                return
            other = run.data.tags.get(schema.HOLDER)
            if self.holder and other and other != self.holder:
                self.reason = "another process took the cell over"
                return
            self.client.set_tag(self.run_id, schema.HEARTBEAT, f"{time.time():.0f}")
            self._last_ok = time.monotonic()
        except Exception:
            pass

    def lost(self) -> str | None:
        """Why this process no longer holds the cell; None while it does."""
        if self.reason is None and time.monotonic() - self._last_ok > self.lease_s:
            self.reason = (
                f"no heartbeat got through for {time.monotonic() - self._last_ok:.0f} s (the lease lasts "
                f"{self.lease_s:.0f} s): another process may hold the cell"
            )
        return self.reason

    def check(self) -> None:
        if (reason := self.lost()) is not None:
            raise LeaseLost(reason)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval) and self.reason is None:
            self.beat()

    def __enter__(self) -> Lease:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

"""Who holds a cell's run: the owner tags a process writes (host, PID and the boot and PID namespace the PID is
valid in), the heartbeat that keeps its lease, and whether a RUNNING run's holder is still live."""

from __future__ import annotations

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

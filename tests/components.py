"""Real components the tests share: built once per test session, whichever pytest-xdist worker asks first.

`make test` runs the tests in two xdist worker processes. A pytest session fixture is per process, so a server or a
trained suite behind one would be made once per worker; `once_per_session` makes it once for the whole run: the
first worker to ask builds it under a file lock in the run's shared temporary folder and writes down what it
returned, the other waits on the lock and reads that. Processes started this way (an `mlflow server`) are
registered with `keep_until_session_end` and ended by the controlling pytest process when every worker is done
(conftest's `pytest_sessionfinish`), never by the worker that happened to start them while another still uses them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

from bench.tracking import stop_ui  # ends a server's whole process group

T = TypeVar("T")
SHARED = "shared-components"  # under the session's base temporary folder (the controller's, under xdist)


def shared_root(tmp_path_factory) -> Path:
    """The folder every worker of this test session sees: the controller's base temp (each xdist worker's base temp
    is a child of it), or the only process's own."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / SHARED
    root.mkdir(parents=True, exist_ok=True)
    return root


def once_per_session(tmp_path_factory, name: str, build: Callable[[Path], T]) -> T:
    """`build(folder)` run once per test session across xdist workers; its value (pickled by this test session into
    its own temporary folder, read back only by it) is returned to every caller."""
    root = shared_root(tmp_path_factory)
    folder, done = root / name, root / f"{name}.value"
    with FileLock(str(root / f"{name}.lock")):
        if done.exists():
            return pickle.loads(done.read_bytes())
        folder.mkdir(exist_ok=True)
        value = build(folder)
        done.write_bytes(pickle.dumps(value))
        return value


def keep_until_session_end(folder: Path, proc: subprocess.Popen) -> None:
    """Register a process group for the controller to end at the session's end (`end_registered`)."""
    (folder / f"process-{proc.pid}.pgid").write_text(str(proc.pid))


def end_registered(root: Path) -> None:
    """End every registered process group under `root`: SIGTERM, then SIGKILL what is left after 20 s."""
    groups = [int(p.read_text()) for p in root.glob("*/process-*.pgid")]
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for pgid in groups:
        while time.monotonic() < deadline and _alive(pgid):
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# ----------------------------------------------------------------------------------------------- the MLflow server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, data: dict | None = None) -> bytes:
    request = urllib.request.Request(
        url, data=json.dumps(data).encode() if data else None, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def wait_healthy(proc, base: str, timeout: float = 120) -> None:
    """Until the MLflow server at `base` answers /health (about 15 s here, more while the other worker is busy);
    fails if it exits or times out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(f"{base}/health") == b"OK":
                return
        except OSError:
            pass
        assert proc.poll() is None, "the MLflow server exited"
        assert time.monotonic() < deadline, f"the MLflow server did not come up in {timeout} s"
        time.sleep(0.5)


# MLflow's job runner (GenAI scorers, prompt optimisation; eight processes, ~12 s of CPU per start) is off, as in
# `bench ui` and docs/usage.md's team server: genbench never submits MLflow jobs.
SERVER_ENV = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def server_command(root: Path, port: int) -> list[str]:
    """`mlflow server` as docs/usage.md runs it for a team, proxying artifacts, on a loopback port."""
    store = ["--backend-store-uri", f"sqlite:///{root / 's.db'}", "--artifacts-destination", str(root / "art")]
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        *store,
    ]


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    """`mlflow server` on a free loopback port, in its own process group; returns it once healthy, and its URI."""
    port = free_port()
    proc = subprocess.Popen(server_command(root, port), env=SERVER_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, uri)
    except BaseException:
        stop_ui(proc)
        raise
    return proc, uri


@contextlib.contextmanager
def server_process(root: Path) -> Iterator[str]:
    """A private `mlflow server` for the one test that must stop it; every other test uses the session's."""
    proc, uri = start_server(root)
    try:
        yield uri
    finally:
        stop_ui(proc)


def shared_server(tmp_path_factory) -> str:
    """The session's one `mlflow server` (proxied artifacts); each test keeps to its own experiment or suite name."""

    def build(folder: Path) -> str:
        proc, uri = start_server(folder)
        keep_until_session_end(folder, proc)
        return uri

    return once_per_session(tmp_path_factory, "mlflow-server", build)


class RunsCode:
    """What a planted checkpoint can hold: an object whose unpickling calls a function (it creates `marker`). Loaded
    weights-only, it must be refused and `marker` must not exist."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")

"""The tracking store: where it is, whether it answers, the MLflow client, and the MLflow UI on it.

bench/tracking/ is the only package that imports mlflow (docs/architecture.md): store (this module), runs (writing a
suite's runs), models (logged models), query (the read side the report and `bench sample` use).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from bench.storage import file_lock

STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow 3's UI opens an experiment in its GenAI (traces) view unless told it holds model-training runs
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says which store and what to do."""


class StoreUnreachable(TrackingError):
    """The tracking server stopped answering while a suite ran (longer than MLflow's retries wait): the suite
    stopped without writing more; each cell's local checkpoint is kept for the next `bench run` to resume."""


def answers(uri: str, timeout: float = 5.0) -> bool:
    """Whether the tracking store answers now (one request, no retries; a local store always does)."""
    try:
        check_reachable(uri, timeout)
    except TrackingError:
        return False
    return True


def default_uri(results: Path) -> str:
    return f"sqlite:///{(Path(results) / 'mlflow.db').resolve()}"


def resolve_uri(uri: str | None, results: Path) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the embedded sqlite store under results/."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(results)


def is_remote(uri: str) -> bool:
    """A tracking server (nodes other than this one reach it), not an embedded store on this machine's disk."""
    return uri.startswith(("http://", "https://"))


REACH_TIMEOUT_S = 5.0  # the one preflight request to a tracking server; MLflow's own calls keep their retries


def check_reachable(uri: str, timeout: float = REACH_TIMEOUT_S) -> None:
    """An HTTP tracking server answers at all, asked once with a short timeout and no retries: MLflow's client
    retries a refused connection with backoff for minutes before it gives up, so a wrong --tracking-uri would
    otherwise hang the command. Any HTTP answer counts (an auth proxy's 401 too): only the connection is checked."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # the server answered
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise TrackingError(
            f"cannot use tracking store {uri}: no answer within {timeout:.0f}s ({reason}); start the MLflow server "
            "or fix --tracking-uri / MLFLOW_TRACKING_URI"
        ) from None


_QUIET = False  # set by quiet_mlflow() in genbench's own processes (the CLI, its workers), never by library calls


def quiet_mlflow() -> None:
    """MLflow's INFO lines (a store's migrations) off this process's output, from its next MLflow client on. Only
    genbench's own processes call this (the `bench` command, a cell's worker or Ray task): a genbench call from a
    user's Python leaves their logging as it was."""
    global _QUIET
    _QUIET = True


def _quiet() -> None:
    """Apply quiet_mlflow() once MLflow is imported (the import sets MLflow's own logger levels)."""
    if _QUIET:
        import mlflow  # noqa: F401

        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def no_progress_bars():
    """MLflow's per-file download progress bar off while the block runs (it would bury a report's or `bench sample`'s
    output), and the environment variable restored after it."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _client(uri: str):
    check_reachable(uri)
    _quiet()
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        # MLflow creates and migrates an embedded store's tables on first use, which two processes starting at once
        # (two `bench run`s, a suite and its workers) must not do together: one at a time, under the store's lock
        with file_lock(db):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # the first use: tables created here, not later, unlocked
        return client
    return MlflowClient(tracking_uri=uri)


def _search(client, experiment_ids: list[str], filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def store_exists(uri: str) -> bool:
    """False only for an embedded sqlite store whose file is not there yet (opening it would create it)."""
    return not (uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file())


def experiment_id(uri: str, experiment: str) -> str | None:
    exp = _client(uri).get_experiment_by_name(experiment)
    return None if exp is None else exp.experiment_id


def serve_ui(uri: str, host: str, port: int) -> subprocess.Popen:
    """Start the MLflow UI on the same store, in its own process group (the server forks workers). Without MLflow's
    job runner (GenAI scorers and prompt optimisation, which genbench does not use): its eight extra processes cost
    ~12 s of CPU at every start and do nothing for a training-runs store."""
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # the server's own, not this process's
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def stop_ui(proc: subprocess.Popen) -> None:
    """End the UI server and every worker it started."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

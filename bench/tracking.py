"""Everything that talks to MLflow (the only module that imports it).

Layout (DESIGN.md, Tracking): experiment = suite name; one parent run per `bench run`; one child run per cell with
tags bench.suite/model/family/dataset/seed/cell/variant/protocol, the cell's flattened config as params, step
metrics `train/...`, final metrics by name, timings, and artifacts.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import schema

STATUSES = ("FINISHED", "FAILED", "KILLED")

# MLflow 3's UI opens an experiment in its GenAI (traces) view unless told it holds model-training runs
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message says which store and what to do."""


def default_uri(results: Path) -> str:
    return f"sqlite:///{(Path(results) / 'mlflow.db').resolve()}"


def resolve_uri(uri: str | None, results: Path) -> str:
    """--tracking-uri, else MLFLOW_TRACKING_URI, else the embedded sqlite store under results/."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(results)


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


def _quiet() -> None:
    """MLflow's INFO lines (migrations, the system-metrics monitor starting and stopping) off genbench's output;
    after the import, which sets MLflow's own logger levels."""
    import mlflow  # noqa: F401

    for name in ("mlflow", "alembic", "mlflow.system_metrics.system_metrics_monitor"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _client(uri: str):
    check_reachable(uri)
    _quiet()
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


class Tracker:
    """One suite's experiment in one tracking store."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path):
        self.uri = uri
        try:
            self.client = _client(uri)
            exp = self.client.get_experiment_by_name(experiment)
            if exp is None:
                location = None
                if uri.startswith("sqlite:") or uri.startswith("file:"):  # embedded store: artifacts beside it
                    location = (Path(artifact_root).resolve() / experiment).as_uri()
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            else:
                if exp.lifecycle_stage == "deleted":
                    raise TrackingError(
                        f"experiment {experiment!r} is deleted in {uri}; restore it in the MLflow "
                        f"UI or `mlflow gc` it first"
                    )
                self.experiment_id = exp.experiment_id
            if exp is None or exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except TrackingError:
            raise
        except Exception as e:
            raise TrackingError(
                f"cannot use tracking store {uri}: {type(e).__name__}: {str(e).splitlines()[0]}; "
                f"check --tracking-uri / MLFLOW_TRACKING_URI (is the server up?)"
            ) from None
        self.experiment = experiment

    def close_orphans(self) -> list[tuple[str, str]]:
        """Runs left RUNNING by a process of this host that no longer exists (SIGKILL, power loss) are marked
        KILLED, so the store never shows a dead run as running; runs owned by live processes or other hosts are
        left alone. Returns (run name, run id) of each run closed."""
        closed = []
        for run in _search(self.client, [self.experiment_id], "attributes.status = 'RUNNING'"):
            tags = run.data.tags
            if tags.get(schema.HOST) != socket.gethostname() or not tags.get(schema.PID, "").isdigit():
                continue
            if _alive(int(tags[schema.PID])):
                continue
            self.client.set_tag(
                run.info.run_id,
                schema.ERROR,
                "its process ended without closing the run (killed?); marked KILLED by a later bench run",
            )
            self.client.set_terminated(run.info.run_id, "KILLED")
            closed.append((run.info.run_name, run.info.run_id))
        return closed

    def finished_cells(self) -> dict[str, str]:
        """bench.cell hash → run id of every FINISHED cell run in the experiment."""
        runs = _search(
            self.client, [self.experiment_id], f"attributes.status = 'FINISHED' and tags.`{schema.CELL}` != ''"
        )
        return {run.data.tags[schema.CELL]: run.info.run_id for run in runs}

    def start_run(self, name: str, tags: dict[str, Any], parent: Run | None = None) -> Run:
        # every value a string: the sqlite store takes an int silently, a tracking server's REST client raises
        tags = {**provenance_tags(), **{k: str(v) for k, v in tags.items()}}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return Run(self.client, run.info.run_id, run.info.artifact_uri)

    def reopen_run(self, run_id: str, cell_key: str) -> Run | None:
        """The run an interrupted cell was logging into (its id kept in the cell's checkpoint), RUNNING again with
        `bench.resumes` counted up, so a cell is one run with continuous curves however often it was interrupted;
        None when that run is gone, finished, in another experiment or of another cell."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        if (
            run.info.experiment_id != self.experiment_id
            or run.info.lifecycle_stage == "deleted"
            or run.info.status == "FINISHED"
            or run.data.tags.get(schema.CELL) != cell_key
        ):
            return None
        resumes = int(run.data.tags.get(schema.RESUMES, "0")) + 1
        self.client.update_run(run_id, status="RUNNING")
        if schema.ERROR in run.data.tags:
            self.client.delete_tag(run_id, schema.ERROR)  # the interruption's reason: history now
        handle = Run(self.client, run_id, run.info.artifact_uri)
        handle.set_tags({schema.RESUMES: resumes})
        return handle


@functools.cache
def provenance_tags() -> dict[str, str]:
    """MLflow's own provenance tags, which its UI shows by itself (the fluent API sets them; MlflowClient does not):
    who ran it, from which command, at which git commit of genbench (when run from a git checkout)."""
    import getpass

    tags = {
        "mlflow.user": getpass.getuser(),
        "mlflow.source.name": sys.argv[0] or "bench",
        "mlflow.source.type": "LOCAL",
    }
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=5
        )
        if commit.returncode == 0 and commit.stdout.strip():
            tags["mlflow.source.git.commit"] = commit.stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git: no commit tag
        pass
    return tags


SYSTEM_METRICS_INTERVAL_S = 10.0  # one psutil/NVML sample and one logged batch per 10 s: well under 1% of a cell


def owner_tags(pid: int) -> dict[str, str]:
    """Which process on which host runs a run: how a later `bench run` recognises runs orphaned by a kill."""
    return {schema.HOST: socket.gethostname(), schema.PID: str(pid)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def attach_run(uri: str, run_id: str) -> Run:
    """A handle on an existing run (a cell's worker process logs into the run its parent created)."""
    client = _client(uri)
    return Run(client, run_id, client.get_run(run_id).info.artifact_uri)


def portable_copy(model):
    """What `Run.log_model` pickles: a CPU copy of `model` in eval mode, its parametrisations baked in."""
    import copy

    return _baked(copy.deepcopy(model).cpu().eval())


def _baked(model):
    """`model` with every parametrisation (sngan's spectral norm, a plugin's weight norm) replaced by the weight it
    computes now: torch refuses to pickle parametrised modules. The logged model computes the same function in eval
    mode (samples and discriminator outputs are unchanged); resuming training uses the run's state-dict checkpoints,
    which keep the parametrisations."""
    from torch.nn.utils import parametrize

    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            # removing a parametrisation deletes its property from the module's class, which a deep copy shares
            # with the original model: give this module a class of its own first
            cls = type(module)
            own = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            module.__class__ = type(cls.__name__, cls.__bases__, own)
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


class Run:
    """A handle on one MLflow run: batched metrics, params, tags and artifacts."""

    def __init__(self, client, run_id: str, artifact_uri: str):
        self.client, self.run_id, self.artifact_uri = client, run_id, artifact_uri
        self.seconds = 0.0  # time spent inside MLflow calls (tracking overhead)

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for i in range(0, len(entries), 1000):
            self._timed(self.client.log_batch, self.run_id, metrics=entries[i : i + 1000])

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(entries), 100):
            self._timed(self.client.log_batch, self.run_id, params=entries[i : i + 100])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._timed(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, path: str) -> None:
        self._timed(self.client.log_text, self.run_id, text, path)

    def log_dict(self, data: dict, path: str) -> None:
        self._timed(self.client.log_text, self.run_id, json.dumps(data, indent=2, sort_keys=True), path)

    def log_file(self, local_path: Path, artifact_dir: str | None = None) -> None:
        self._timed(self.client.log_artifact, self.run_id, str(local_path), artifact_dir)

    def log_model(self, model, path: str, metadata: dict[str, str]) -> None:
        """`model` as an MLflow PyTorch model at artifact `path` of this run, so that
        `mlflow.pytorch.load_model("runs:/<run id>/<path>")` returns it in a fresh process. Pickled whole (the class
        is importable from the installed genbench; a plugin's module travels with it as code); on the CPU, so any
        machine loads it. The run's own artifact directory, not a separate MLflow LoggedModel: MLflow 3 resolves
        `runs:/ID/NAME` only for artifacts of the run."""
        import tempfile

        import mlflow.pytorch

        cls = type(model)
        code = []
        if not cls.__module__.startswith("baselines."):  # a plugin: its top-level module or package travels along
            top = sys.modules[cls.__module__.split(".")[0]]
            file = Path(top.__file__)
            code = [str(file.parent if file.name == "__init__.py" else file)]
        from importlib.metadata import version

        portable = portable_copy(model)
        with tempfile.TemporaryDirectory() as tmp, _quiet_logger("mlflow.pytorch"):
            local = Path(tmp) / "model"
            mlflow.pytorch.save_model(
                portable,
                str(local),
                serialization_format="pickle",
                pip_requirements=[f"torch=={version('torch')}", f"genbench=={version('genbench')}"],
                code_paths=code or None,
                metadata=metadata,
            )
            self._timed(self.client.log_artifacts, self.run_id, str(local), path)

    def log_image_step(self, image: np.ndarray, key: str, step: int) -> None:
        """An (H, W, C) uint8 image as an MLflow image at `step` (`log_image(key=, step=)`): the UI's image view
        slides through a run's steps and compares runs side by side."""
        from PIL import Image

        self._timed(
            self.client.log_image,
            self.run_id,
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image),
            key=key,
            step=step,
            synchronous=True,
        )

    @contextlib.contextmanager
    def system_metrics(self, uri: str, resume: bool = False, interval: float = SYSTEM_METRICS_INTERVAL_S):
        """MLflow's system-metrics monitor for this run while the block runs: CPU, memory, disk, network, and on a
        CUDA machine GPU utilisation and memory (NVML, the `gpu` extra), logged as system/* every `interval` s.
        Monitoring never fails a cell: a monitor that cannot start is skipped."""
        monitor = None
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            _quiet()
            monitor = SystemMetricsMonitor(
                self.run_id, sampling_interval=interval, resume_logging=resume, tracking_uri=uri
            )
            monitor.start()
        except Exception:  # e.g. psutil missing
            monitor = None
        try:
            yield
        finally:
            if monitor is not None:
                try:
                    monitor.finish()
                except Exception:
                    pass

    def log_image(self, image: np.ndarray, path: str) -> None:
        """An (H, W, C) uint8 image as a PNG artifact."""
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, format="PNG")
        self._timed(self._log_bytes, buf.getvalue(), path)

    def _log_bytes(self, data: bytes, path: str) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            local.write_bytes(data)
            parent = str(Path(path).parent)
            self.client.log_artifact(self.run_id, str(local), None if parent == "." else parent)

    def log_dataset(self, name: str, digest: str, source: str, context: str = "training") -> None:
        """The dataset as an MLflow input (`mlflow.log_input`), with genbench's sha256 digest."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        dataset = MetaDataset(CodeDatasetSource({"loader": source, "sha256": digest}), name=name, digest=digest[:36])
        entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        try:
            self._timed(self.client.log_inputs, self.run_id, datasets=[entry])
        except MlflowException as e:
            # cells starting at once (the Ray executor) can both insert the dataset's row into a sqlite store; the
            # loser fails on the UNIQUE constraint, and a second attempt finds and links the winner's row
            if "UNIQUE constraint failed" not in str(e):
                raise
            self._timed(self.client.log_inputs, self.run_id, datasets=[entry])

    def status(self) -> str:
        return self.client.get_run(self.run_id).info.status

    def end(self, status: str = "FINISHED") -> None:
        assert status in STATUSES, status
        self._timed(self.client.set_terminated, self.run_id, status)


def _search(client, experiment_ids: list[str], filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_runs(uri: str, experiment: str) -> pd.DataFrame:
    """Every cell run of an experiment as one row: run_id, status, start_time, tags (bench.*), params, metrics."""
    try:
        client = _client(uri)
        exp = client.get_experiment_by_name(experiment)
    except TrackingError:
        raise
    except Exception as e:
        raise TrackingError(f"cannot read tracking store {uri}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if exp is None:
        return pd.DataFrame()
    rows = []
    for run in _search(client, [exp.experiment_id], f"tags.`{schema.CELL}` != ''"):
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "artifact_uri": run.info.artifact_uri,
        }
        row.update({k: v for k, v in run.data.tags.items() if k.startswith(schema.TAG_PREFIX)})
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def metric_histories(uri: str, run_ids: list[str], keys: tuple[str, ...]) -> pd.DataFrame:
    """Every logged value of `keys` for the runs: columns run_id, key, step, value, timestamp (ms)."""
    client = _client(uri)
    rows = [
        {"run_id": run_id, "key": key, "step": m.step, "value": m.value, "timestamp": m.timestamp}
        for run_id in run_ids
        for key in keys
        for m in client.get_metric_history(run_id, key)
    ]
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value", "timestamp"])


def load_model(uri: str, run_id: str, path: str, device: str = "cpu"):
    """The model a cell logged at `path` (schema.MODEL_FINAL / MODEL_BEST), on `device`. TrackingError when the run
    or the model does not exist."""
    client = _client(uri)
    try:
        client.get_run(run_id)
    except Exception as e:
        raise TrackingError(
            f"no run {run_id!r} in {uri} ({type(e).__name__}); copy a run id from the MLflow UI"
        ) from None
    parent = str(Path(path).parent)
    if f"{path}/MLmodel" not in {a.path for a in client.list_artifacts(run_id, path)}:
        have = [a.path for a in client.list_artifacts(run_id, parent)]
        raise TrackingError(
            f"run {run_id} has no logged model at {path!r} (it has {have or 'none'}): runs finished before genbench "
            "logged models, real-data and external runs have none; use a cell run of `bench run`"
        )
    import mlflow
    import mlflow.pytorch

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one model: the bar only adds noise
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with _quiet_logger("mlflow.pytorch"):
            return mlflow.pytorch.load_model(f"runs:/{run_id}/{path}", map_location=device)
    finally:
        mlflow.set_tracking_uri(previous)


def run_params(uri: str, run_id: str) -> dict[str, str]:
    return dict(_client(uri).get_run(run_id).data.params)


@contextlib.contextmanager
def _quiet_logger(name: str, level: int = logging.ERROR):
    """MLflow warns on every pickled model that pickles run code on load: genbench's own, by design."""
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def download_artifact(uri: str, run_id: str, path: str, dst: Path) -> Path | None:
    """A run's artifact copied under `dst`; None when the run has no such artifact."""
    client = _client(uri)
    parent = str(Path(path).parent)
    names = {a.path for a in client.list_artifacts(run_id, None if parent == "." else parent)}
    if path not in names:
        return None
    Path(dst).mkdir(parents=True, exist_ok=True)
    # a report fetches one small file per run: MLflow's per-file progress bar would only bury the report's output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return Path(client.download_artifacts(run_id, path, str(dst)))


def attach_report(uri: str, experiment: str, files: list[Path], root: Path | None = None) -> str | None:
    """Attach report files to the experiment's most recent parent run, under report/ (keeping their path relative
    to `root`, e.g. report/figures/); returns the run id (None if there is none)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    parents = client.search_runs(
        [exp.experiment_id], "tags.`bench.parent` = 'true'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    if not parents:
        return None
    for f in files:
        sub = Path(f).parent.relative_to(root) if root is not None else Path(".")
        client.log_artifact(parents[0].info.run_id, str(f), str(Path("report") / sub) if str(sub) != "." else "report")
    return parents[0].info.run_id


def store_exists(uri: str) -> bool:
    """False only for an embedded sqlite store whose file is not there yet (opening it would create it)."""
    return not (uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file())


def experiment_id(uri: str, experiment: str) -> str | None:
    exp = _client(uri).get_experiment_by_name(experiment)
    return None if exp is None else exp.experiment_id


def serve_ui(uri: str, host: str, port: int) -> subprocess.Popen:
    """Start the MLflow UI on the same store, in its own process group (the server forks workers)."""
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
    return subprocess.Popen(cmd, start_new_session=True)


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

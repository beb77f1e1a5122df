"""Writing a suite's runs: the experiment (`Tracker`) and one handle per run (`Run`: batched metrics, params, tags,
artifacts, images, the dataset input, system metrics). Layout: experiment = suite name; one parent run per
`bench run`; one child run per cell with the tags of bench.schema, the cell's flattened config as params, step
metrics, final metrics by name, artifacts. Who holds a run: bench/tracking/lease.py."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import schema
from bench.storage import source_commit
from bench.tracking.lease import (
    Holder,
    Lease,
    Watch,
    holder_of,
    latest_claim,
    owner_tags,
    pid_alive,
    pid_checkable_here,
    take_claim,
)
from bench.tracking.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    STATUSES,
    TrackingError,
    _client,
    _search,
)


class Tracker:
    """One suite's experiment in one tracking store."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path):
        self.uri = uri
        self.watch = Watch()  # other processes' leases, judged by this process's clock
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
            if not pid_checkable_here(tags):
                continue
            if pid_alive(int(tags[schema.PID])):
                continue
            self.client.set_tag(
                run.info.run_id,
                schema.ERROR,
                "its process ended without closing the run (killed?); marked KILLED by a later bench run",
            )
            self.client.set_terminated(run.info.run_id, "KILLED")
            closed.append((run.info.run_name, run.info.run_id))
        return closed

    def holders(self, cell_key: str) -> list[Holder]:
        """The RUNNING runs of a cell, each with its holder and whether its lease is live: a heartbeat (or, before the
        first beat, a start) this process has not yet watched unchanged for schema.LEASE_S (`Watch`), and on this
        host a process that exists."""
        query = f"attributes.status = 'RUNNING' and tags.`{schema.CELL}` = '{cell_key}'"
        out = [holder_of(run, self.watch) for run in _search(self.client, [self.experiment_id], query)]
        return sorted(out, key=lambda h: (h.started, h.run_id))

    def latest_claim(self, cell_key: str) -> int:
        """The highest generation claimed of a cell (bench.tracking.lease: claims); 0 when never claimed."""
        return latest_claim(self.client, self.experiment_id, cell_key)

    def claim(self, cell_key: str, generation: int, holder: str) -> bool:
        """Claim generation `generation` of a cell: True for exactly one process, whatever the timing."""
        return take_claim(self.client, self.experiment_id, cell_key, generation, holder)

    def claim_pending(self, cell_key: str, generation: int) -> bool:
        """Whether claim `generation` of a cell may still be opening its run: no run of the cell carries it yet, and
        this process has not watched it so for schema.LEASE_S (then its claimant died before opening it)."""
        query = f"tags.`{schema.CELL}` = '{cell_key}' and tags.`{schema.HOLDER}` LIKE '{generation}:%'"
        if _search(self.client, [self.experiment_id], query):
            return False
        return not self.watch.expired(f"claim {cell_key}", str(generation))

    def holder(self, run_id: str) -> Holder | None:
        """The holder of one run while it is RUNNING; None once it ended."""
        run = self.client.get_run(run_id)
        return holder_of(run, self.watch) if run.info.status == "RUNNING" else None

    def tag(self, run_id: str, key: str) -> str | None:
        return self.client.get_run(run_id).data.tags.get(key)

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def release(self, run_id: str, reason: str) -> None:
        """A RUNNING run whose holder is gone (its lease expired) marked KILLED, with why."""
        self.client.set_tag(run_id, schema.ERROR, reason)
        self.client.set_terminated(run_id, "KILLED")

    def withdraw(self, run_id: str) -> None:
        """A run created for a cell another process won: deleted, so the cell has one run."""
        self.client.delete_run(run_id)

    def shared_checkpoint(self, cell_key: str, local: Path, newer_than: int = -1) -> str | None:
        """bench.tracking.resume.newest: the cell's newest checkpoint in the store, downloaded to `local`."""
        from bench.tracking.resume import newest

        return newest(self, cell_key, local, newer_than)

    def finished_cells(self, cell_key: str | None = None) -> dict[str, str]:
        """bench.cell hash → run id of every FINISHED cell run in the experiment (of one cell, with `cell_key`)."""
        which = f"= '{cell_key}'" if cell_key else "!= ''"
        runs = _search(
            self.client, [self.experiment_id], f"attributes.status = 'FINISHED' and tags.`{schema.CELL}` {which}"
        )
        return {run.data.tags[schema.CELL]: run.info.run_id for run in runs}

    def start_run(self, name: str, tags: dict[str, Any], parent: Run | None = None) -> Run:
        # every value a string: the sqlite store takes an int silently, a tracking server's REST client raises
        tags = {**provenance_tags(), **{k: str(v) for k, v in tags.items()}}
        if parent is not None:
            tags["mlflow.parentRunId"] = parent.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return Run(self.client, run.info.run_id, run.info.artifact_uri)

    def reopen_run(self, run_id: str, cell_key: str, holder: str = "") -> Run | None:
        """The run an interrupted cell was logging into (its id kept in the cell's checkpoint), RUNNING again with
        `bench.resumes` counted up, so a cell is one run with continuous curves however often it was interrupted;
        None when that run is gone, finished, in another experiment or of another cell. `holder` (schema.HOLDER) is
        written before the run is RUNNING again, so a former holder never sees it RUNNING under its own id."""
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
        if holder:
            self.client.set_tag(run_id, schema.HOLDER, holder)
        self.client.update_run(run_id, status="RUNNING")
        if schema.ERROR in run.data.tags:
            self.client.delete_tag(run_id, schema.ERROR)  # the interruption's reason: history now
        handle = Run(self.client, run_id, run.info.artifact_uri)
        # held from now: this process's beat and owner (the executor's worker takes them over when it starts)
        handle.set_tags({schema.RESUMES: resumes, schema.HEARTBEAT: f"{time.time():.0f}", **owner_tags(os.getpid())})
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
    commit = source_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


_DUPLICATE_ROW = ("BAD_REQUEST", "RESOURCE_ALREADY_EXISTS")  # the error codes of a concurrent insert's duplicate row
SYSTEM_METRICS_INTERVAL_S = 10.0  # one psutil/NVML sample and one logged batch per 10 s: well under 1% of a cell


def attach_run(uri: str, run_id: str) -> Run:
    """A handle on an existing run (a cell's worker process logs into the run its parent created)."""
    client = _client(uri)
    return Run(client, run_id, client.get_run(run_id).info.artifact_uri)


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

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, model_id: str | None = None) -> None:
        """Metrics of this run at `step`; with `model_id`, also the metrics of that LoggedModel (its Models tab row)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step or 0, model_id=model_id) for k, v in metrics.items()]
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

    def log_model(self, model, name: str, metadata: dict[str, str], step: int) -> str:
        """`model` as an MLflow 3 LoggedModel `name` (schema.MODEL_FINAL / MODEL_BEST) with the PyTorch flavour
        (bench.tracking.models.save_model): created with this run as its source, uploaded, marked READY, recorded as
        the run's output at `step`, its id in the run's tag schema.MODEL_IDS[name]. Returns the model id, to link the
        model's metrics (`log_metrics(..., model_id=)`)."""
        import tempfile

        from mlflow.entities import LoggedModelOutput

        from bench.tracking.models import save_model

        experiment = self._timed(self.client.get_run, self.run_id).info.experiment_id
        cell = [metadata.get(k) for k in (schema.MODEL, schema.DATASET, schema.SEED)]
        logged = self._timed(
            self.client.create_logged_model,
            experiment,
            name=f"{cell[0]}-{cell[1]}-seed{cell[2]}-{name}" if all(cell) else name,  # the Models tab tells them apart
            source_run_id=self.run_id,
            params={k: str(v) for k, v in metadata.items()},
            # the Models tab filters by these tags (model, dataset, seed); the checkpoint is the model's name
            tags={**{k: str(v) for k, v in metadata.items() if k.startswith("bench.")}, schema.CHECKPOINT: name},
            model_type=schema.MODEL_TYPE,
        )
        try:
            with tempfile.TemporaryDirectory() as tmp:
                local = save_model(model, Path(tmp) / "model", metadata)
                self._timed(self.client.log_model_artifacts, logged.model_id, str(local))
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, "FAILED")
            raise
        self._timed(self.client.finalize_logged_model, logged.model_id, "READY")
        self._timed(self.client.log_outputs, self.run_id, [LoggedModelOutput(logged.model_id, step)])
        self.set_tags({schema.MODEL_IDS[name]: logged.model_id})
        return logged.model_id

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

    def heartbeat(self, holder: str = "", interval: float = schema.HEARTBEAT_S) -> Lease:
        """The cell's lease while a `with` block runs (bench.tracking.lease.Lease): beats every `interval` s, and
        says (`lost`, `check`) when `holder` no longer holds the run."""
        return Lease(self.client, self.run_id, holder, interval)

    def fetch_resume_checkpoint(self, local: Path, newer_than: int = -1) -> bool:
        """bench.tracking.resume.fetch: this run's checkpoint in the store, verified, written to `local`."""
        from bench.tracking.resume import fetch

        return fetch(self, local, newer_than)

    def tag(self, key: str) -> str | None:
        return self.client.get_run(self.run_id).data.tags.get(key)

    def count_resume(self) -> None:
        """One more resume of this run (bench.resumes), e.g. a Ray retry on another node."""
        resumes = int(self.client.get_run(self.run_id).data.tags.get(schema.RESUMES, "0")) + 1
        self.set_tags({schema.RESUMES: resumes})

    def log_resume_checkpoint(self, path: Path, step: int = -1) -> None:
        """bench.tracking.resume.share: the resumable checkpoint (and best.pt) into the store, with their digests."""
        from bench.tracking.resume import share

        share(self, path, step)

    @contextlib.contextmanager
    def system_metrics(self, resume: bool = False, interval: float = SYSTEM_METRICS_INTERVAL_S, fence=None):
        """System metrics of this run while the block runs (bench.tracking.system): CPU, memory, disk, network, and
        on a CUDA machine GPU utilisation and memory (NVML, the `gpu` extra), logged as system/* every `interval` s;
        a resumed run continues its steps; `fence()` (the lease's `lost`) stops them when the run is no longer this
        process's. Monitoring never fails a cell: a sampler that cannot start is skipped."""
        from bench.tracking.system import SystemMetrics

        sampler = SystemMetrics(self.client, self.run_id, interval, resume, fence)
        try:
            sampler.start()
        except Exception:  # e.g. psutil missing
            sampler = None
        try:
            yield sampler
        finally:
            if sampler is not None:
                sampler.stop()

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
        """The dataset as the run's MLflow input (its Datasets column), with genbench's sha256 digest: MLflow's
        public entities (Dataset, DatasetInput) through the client's log_inputs."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        source_json = json.dumps({"loader": source, "sha256": digest}, sort_keys=True)
        dataset = Dataset(name=name, digest=digest[:36], source_type="code", source=source_json)
        entry = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])
        try:
            self._timed(self.client.log_inputs, self.run_id, datasets=[entry])
        except MlflowException as e:
            # cells starting at once (the Ray executor) can both insert the dataset's row: the loser's insert breaks
            # the store's uniqueness (an IntegrityError, which MLflow's SQL stores report as BAD_REQUEST, and a server
            # passes on with that code, whatever the database), and a second attempt finds and links the winner's
            # row; a request that is bad for another reason fails the second attempt the same way and is raised
            if e.error_code not in _DUPLICATE_ROW:
                raise
            self._timed(self.client.log_inputs, self.run_id, datasets=[entry])

    def status(self) -> str:
        return self.client.get_run(self.run_id).info.status

    def end(self, status: str = "FINISHED") -> None:
        assert status in STATUSES, status
        self._timed(self.client.set_terminated, self.run_id, status)

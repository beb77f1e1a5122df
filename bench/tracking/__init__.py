"""Everything that talks to MLflow; the only package that imports it.

- store: where the store is, whether it answers (in seconds), the MLflow client, the UI on it
- runs: writing a suite's runs (`Tracker`, `Run`)
- lease: who holds a run (owner tags, heartbeat liveness), for orphaned runs and taken-over cells
- models: the models a cell logs, and fetching a run's weights-only checkpoints
- query: the read side (the report's table of runs, metric histories, artifacts)

The names below are the package's interface; callers write `from bench import tracking` and `tracking.Tracker`.
"""

from bench.tracking.lease import Lease, LeaseLost
from bench.tracking.models import download_checkpoint, portable_copy
from bench.tracking.query import (
    attach_report,
    download_artifact,
    latest_parent,
    load_runs,
    metric_histories,
    run_params,
)
from bench.tracking.runs import Holder, Run, Tracker, attach_run, owner_tags, provenance_tags
from bench.tracking.store import (
    StoreUnreachable,
    TrackingError,
    answers,
    check_reachable,
    default_uri,
    experiment_id,
    is_remote,
    quiet_mlflow,
    resolve_uri,
    serve_ui,
    stop_ui,
    store_exists,
)

__all__ = [
    "Holder",
    "quiet_mlflow",
    "Lease",
    "LeaseLost",
    "Run",
    "Tracker",
    "TrackingError",
    "StoreUnreachable",
    "answers",
    "attach_report",
    "attach_run",
    "check_reachable",
    "default_uri",
    "download_artifact",
    "experiment_id",
    "is_remote",
    "latest_parent",
    "download_checkpoint",
    "load_runs",
    "metric_histories",
    "owner_tags",
    "portable_copy",
    "provenance_tags",
    "resolve_uri",
    "run_params",
    "serve_ui",
    "stop_ui",
    "store_exists",
]

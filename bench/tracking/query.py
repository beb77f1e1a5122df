"""The read side: a suite's runs as one table (the report), metric histories (figures), params and artifacts of
a run, and the report attached to the suite's parent run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import schema
from bench.tracking.store import TrackingError, _client, _search, no_progress_bars


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


def run_params(uri: str, run_id: str) -> dict[str, str]:
    return dict(_client(uri).get_run(run_id).data.params)


def download_artifact(uri: str, run_id: str, path: str, dst: Path) -> Path | None:
    """A run's artifact copied under `dst`; None when the run has no such artifact."""
    client = _client(uri)
    parent = str(Path(path).parent)
    names = {a.path for a in client.list_artifacts(run_id, None if parent == "." else parent)}
    if path not in names:
        return None
    Path(dst).mkdir(parents=True, exist_ok=True)
    with no_progress_bars():  # a report fetches one small file per run: the bar would only bury its output
        return Path(client.download_artifacts(run_id, path, str(dst)))


def attach_report(uri: str, experiment: str, files: list[Path], root: Path | None = None) -> str | None:
    """Attach report files to the experiment's most recent parent run, under report/ (keeping their path relative
    to `root`, e.g. report/figures/); returns the run id (None if there is none)."""
    parent = latest_parent(uri, experiment)
    if parent is None:
        return None
    client = _client(uri)
    for f in files:
        sub = Path(f).parent.relative_to(root) if root is not None else Path(".")
        folder = str(Path(schema.REPORT_DIR) / sub) if str(sub) != "." else schema.REPORT_DIR
        client.log_artifact(parent, str(f), folder)
    return parent


def latest_parent(uri: str, experiment: str) -> str | None:
    """The run id of the experiment's most recent parent run (a `bench run` or `bench sweep`); None without one."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    parents = client.search_runs(
        [exp.experiment_id], f"tags.`{schema.PARENT}` = 'true'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    return parents[0].info.run_id if parents else None

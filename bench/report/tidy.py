"""The leaderboard's CSV files (torch-free):

- `leaderboard.csv`: the summary, a row per table row (model variant) with every metric's n, mean, std and
  interval as columns, as the tables show them.
- `leaderboard-tidy.csv`: one row per suite × dataset × model × seed × checkpoint × metric, with the run, the
  protocol fingerprint and the encoder a sample metric was computed in as columns: `pd.read_csv` and a groupby
  or a plot away from any question.
"""

from __future__ import annotations

import pandas as pd

from bench import schema
from bench.report.tables import Section

TIDY_COLUMNS = (
    "suite",
    "dataset",
    "protocol",
    "protocol_version",
    "model",
    "variant",
    "family",
    "seed",
    "run_id",
    "checkpoint",
    "metric",
    "encoder",
    "value",
)


def to_csv_frame(sections: list[Section]) -> pd.DataFrame:
    frames = []
    for s in sections:
        t = s.table.drop(columns=["label"]).copy()
        t.insert(0, "protocol", s.protocol)
        t.insert(0, "dataset", s.dataset)
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def to_tidy_frame(suite: str, sections: list[Section]) -> pd.DataFrame:
    """Every logged metric of the runs behind the tables, a row each. `checkpoint` is "best" for the metrics of the
    checkpoint selected on periodic FID (logged as best/<metric>), "final" otherwise; `encoder` names the features a
    sample metric was computed in ("" for the rest: likelihoods, IS, timings)."""
    rows = []
    for s in sections:
        runs = s.runs
        metrics = [c for c in runs.columns if c.startswith("metrics.")]
        for _, run in runs.iterrows():
            for column in metrics:
                value = run[column]
                if pd.isna(value):
                    continue
                key = column.removeprefix("metrics.")
                checkpoint = "best" if key.startswith(schema.BEST_PREFIX) else "final"
                metric = key.removeprefix(schema.BEST_PREFIX)
                rows.append(
                    (
                        suite,
                        s.dataset,
                        s.protocol,
                        str(run.get(schema.PROTOCOL_VERSION_TAG, "")),
                        run[schema.MODEL],
                        run[schema.VARIANT],
                        run[schema.FAMILY],
                        run[schema.SEED],
                        run["run_id"],
                        checkpoint,
                        metric,
                        encoder_of(metric, s.encoder),
                        float(value),
                    )
                )
    return pd.DataFrame(rows, columns=list(TIDY_COLUMNS))


def encoder_of(metric: str, first: str) -> str:
    """The encoder a metric was computed in: the suffix's (fid_dinov2_vits14 → dinov2-vits14), the section's first
    encoder for a plain sample metric (fid), "" for a metric of no encoder."""
    base = schema.base_metric(metric)
    if base not in schema.ENCODER_METRICS:
        return ""
    if base == metric:
        return first
    return next(enc for enc in schema.ENCODERS if schema.encoder_key(base, enc) == metric)

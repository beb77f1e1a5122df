"""The report of a sweep (`bench sweep`, `bench report --sweep`): per (dataset, model), the expected best validation
score at budget k = 1…B with its bootstrap band over trials (Lucic et al. 2018's figure), a table of the best at
budget B with its interval, the chosen configurations; the leaderboard of the retrained winners (the suite's full
protocol, bench.report.files); the protocol and the search spaces in protocol.json. Reads MLflow through
bench.tracking only; never imports torch."""

from __future__ import annotations

import base64
import html
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bench import schema, tracking
from bench.report import stats
from bench.report.files import write_report


@dataclass
class ModelSweep:
    """One model's trials on one dataset and what they say."""

    dataset: str
    model: str
    scores: list[float]  # validation FID per trial, in trial order; NaN for a failed or unfinished trial
    failed: int
    running: int  # trials not finished yet (the sweep was stopped before them): not part of the budget
    curve: np.ndarray  # expected best at k = 1…B
    low: np.ndarray
    high: np.ndarray
    winner: int | None  # the trial with the lowest score
    values: dict[str, str] = field(default_factory=dict)  # the winner's sampled hyperparameters (search.<name>)

    @property
    def budget(self) -> int:
        return len(self.scores)


def sweeps(runs: pd.DataFrame, resamples: int = 2000, keys: set[str] | None = None) -> list[ModelSweep]:
    """The (dataset, model) sweeps in a sweep experiment's runs (only the trials of these bench.cell `keys`, when
    given: the latest sweep's): the most recent run of each trial counts (a resumed or re-run trial is one trial);
    FINISHED trials give scores, FAILED ones are draws that found nothing, the others (killed, still running) are
    left out of the budget until they finish."""
    if runs.empty or schema.SWEEP_ROLE not in runs:
        return []
    trials = runs[runs[schema.SWEEP_ROLE] == "trial"].sort_values("start_time")
    if keys is not None:
        trials = trials[trials[schema.CELL].isin(keys)]
    trials = trials.drop_duplicates(schema.CELL, keep="last")
    out = []
    for (dataset, model), group in trials.groupby([schema.DATASET, schema.MODEL], sort=True):
        group = group.assign(_trial=group[schema.TRIAL].astype(int)).sort_values("_trial")
        done = group[group["status"].isin(["FINISHED", "FAILED"])]
        score = done.get(f"metrics.{schema.SWEEP_SCORE}", pd.Series(np.nan, index=done.index))
        scores = [
            float(s) if st == "FINISHED" and pd.notna(s) else math.nan
            for s, st in zip(score, done["status"], strict=True)
        ]
        if not scores:
            continue
        curve = stats.expected_best(scores)
        low, high = stats.expected_best_band(scores, resamples)
        finite = [i for i, s in enumerate(scores) if math.isfinite(s)]
        winner_row = done.iloc[min(finite, key=lambda i: scores[i])] if finite else None
        values = {}
        if winner_row is not None:
            prefix = f"params.{schema.SEARCH_PARAM_PREFIX}"
            values = {k[len(prefix) :]: v for k, v in winner_row.items() if k.startswith(prefix) and pd.notna(v)}
        out.append(
            ModelSweep(
                dataset, model, scores, sum(not math.isfinite(s) for s in scores), len(group) - len(done), curve,
                low, high, None if winner_row is None else int(winner_row["_trial"]), values,
            )
        )  # fmt: skip
    return out


def _number(text: str) -> str:
    """A logged param as the table shows it: integers as they are, reals to 3 significant digits."""
    for kind, shown in ((int, "{}"), (float, "{:.3g}")):
        try:
            return shown.format(kind(text))
        except ValueError:
            pass
    return text


def summary_table(found: list[ModelSweep]) -> pd.DataFrame:
    rows = []
    for s in found:
        finite = [x for x in s.scores if math.isfinite(x)]
        rows.append(
            {
                "dataset": s.dataset,
                "model": s.model,
                "trials": s.budget,
                "failed": s.failed,
                "P(1 trial finds nothing)": s.failed / s.budget if s.budget else math.nan,
                "expected best, 1 trial": s.curve[0],
                "expected best at B": s.curve[-1],
                "95% band at B": (s.low[-1], s.high[-1]),
                "best found": min(finite) if finite else math.nan,
                "winning trial": s.winner,
                "chosen configuration": ", ".join(f"{k} = {_number(v)}" for k, v in sorted(s.values.items())),
            }
        )
    return pd.DataFrame(rows)


def _fmt(x) -> str:
    if isinstance(x, tuple):
        return "–" if any(not math.isfinite(v) for v in x) else f"[{x[0]:.4g}, {x[1]:.4g}]"
    if isinstance(x, float):
        return "–" if not math.isfinite(x) else f"{x:.4g}"
    return "–" if x is None else str(x)


INTRO = (
    "Equal tuning budgets (Lucic et al. 2018, *Are GANs Created Equal?*): each model tried B configurations drawn "
    "at random from its search space; each trial was trained once and scored by its FID against the validation "
    "split (training images no model trained on and no reported number is scored on). *Expected best at k* is the "
    "expected lowest validation FID among k trials drawn from the B (exact, from the order statistics); the band is "
    "its 95% percentile bootstrap band over the trials, which covers the true curve less often than 95% (about "
    "80–90% at k = 1 and 45–50% at k = B in simulations: docs/sweep.md). A failed (diverged) trial is a draw that "
    "found nothing: "
    "the expectation is over the draws in which at least one trial finished, and *P(1 trial finds nothing)* is the "
    "share of failed trials (sweep.csv gives P(all k fail) for every k). "
    "The winning configuration of each model was retrained over the suite's seeds and scored under the full "
    "protocol: the leaderboard below."
)


def to_markdown(suite: str, found: list[ModelSweep], figures: list[tuple[str, Path]], spaces: dict) -> str:
    lines = [f"# Sweep — suite `{suite}`", "", INTRO, ""]
    if not found:
        lines.append(
            f"No trials in experiment `{schema.sweep_experiment(suite)}` yet: run `bench sweep --suite {suite}`."
        )
        return "\n".join(lines) + "\n"
    table = summary_table(found)
    header = list(table.columns)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c]) for c in header) + " |")
    lines.append("")
    for caption, path in figures:
        lines += [f"![{caption}](figures/{Path(path).name})", "", f"*{caption}*", ""]
    if spaces:
        lines += ["## Search spaces", ""]
        for model, space in spaces.items():
            shown = "; ".join(f"{name}: {_space_text(spec)}" for name, spec in space.items()) or "—"
            lines.append(f"- **{model}**: {shown}")
        lines.append("")
    lines += [
        "The retrained winners: [leaderboard.md](leaderboard.md) ([HTML](leaderboard.html)); what defines the sweep "
        "and the evaluation: [protocol.json](protocol.json).",
        "",
    ]
    return "\n".join(lines)


def _space_text(spec: dict) -> str:
    ((kind, values),) = spec.items()
    if kind == "choice":
        return "one of {" + ", ".join(map(str, values)) + "}"
    return f"{kind.replace('_', '-')} [{values[0]:g}, {values[1]:g}]"


def to_html(suite: str, markdown_table: pd.DataFrame, figures, spaces) -> str:
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Sweep — suite {e(suite)}</title><style>body{{font-family:sans-serif;max-width:1200px;margin:auto}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 6px}</style></head><body>",
        f"<h1>Sweep — suite <code>{e(suite)}</code></h1>",
        f"<p>{e(INTRO).replace('*', '')}</p>",
    ]
    if len(markdown_table):
        header = list(markdown_table.columns)
        parts.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>")
        for _, row in markdown_table.iterrows():
            parts.append("<tr>" + "".join(f"<td>{e(_fmt(row[c]))}</td>" for c in header) + "</tr>")
        parts.append("</tbody></table>")
    for caption, path in figures:
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}"><figcaption>{e(caption)}'
                     "</figcaption></figure>")  # fmt: skip
    for model, space in spaces.items():
        shown = "; ".join(f"{name}: {_space_text(spec)}" for name, spec in space.items())
        parts.append(f"<p><b>{e(model)}</b>: {e(shown)}</p>")
    parts.append('<p>The retrained winners: <a href="leaderboard.html">leaderboard</a>.</p></body></html>')
    return "\n".join(parts) + "\n"


def write_sweep_report(
    uri: str, suite: str, out: Path, published: tuple = (), resamples: int = 2000
) -> dict[str, Path]:
    """sweep.md, sweep.html, sweep.csv (the budget curves), figures/<dataset>-budget.png, protocol.json (the sweep's
    definition and the retrained cells' evaluation protocol) and the retrained winners' leaderboard files."""
    from bench.report import figures as plots

    experiment = schema.sweep_experiment(suite)
    runs = tracking.load_runs(uri, experiment)
    record, evaluation = _definition(uri, experiment, runs)
    # the latest sweep's trials and retrained winners; an earlier sweep in the experiment (another budget, schedule or
    # search space) is left out. A sweep stopped before its winners were retrained has no leaderboard rows yet.
    keys = {t["key"] for t in record["trials"]} if "trials" in record else None
    retrained = {k for w in record.get("winners", []) for k in w["retrained"]} if keys is not None else None
    found = sweeps(runs, resamples, keys)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = write_report(uri, experiment, out, "final", published, cells=retrained)  # trials are never rows
    drawn = []
    for dataset in sorted({s.dataset for s in found}):
        mine = [s for s in found if s.dataset == dataset]
        path = plots.budget_curves(mine, dataset, out / "figures" / f"{dataset}-budget.png")
        caption = (
            f"{dataset}: expected best validation FID against the tuning budget (trials per model), with its 95% "
            "bootstrap band over the trials"
        )
        drawn.append((caption, path))
        paths[f"figure:{path.name}"] = path
    spaces = record.get("search_spaces", {})
    paths["sweep"] = out / "sweep.md"
    paths["sweep"].write_text(to_markdown(suite, found, drawn, spaces))
    paths["sweep_html"] = out / "sweep.html"
    paths["sweep_html"].write_text(to_html(suite, summary_table(found), drawn, spaces))
    curves = [
        {"dataset": s.dataset, "model": s.model, "budget": k + 1, "expected_best": s.curve[k], "low": s.low[k],
         "high": s.high[k], "p_all_fail": fail}
        for s in found for k, fail in enumerate(stats.all_fail(s.scores))
    ]  # fmt: skip
    paths["sweep_csv"] = out / "sweep.csv"
    pd.DataFrame(curves).to_csv(paths["sweep_csv"], index=False)
    paths["protocol"] = out / "protocol.json"
    paths["protocol"].write_text(json.dumps({"sweep": record, "evaluation": evaluation}, indent=2, default=str))
    return paths


def _definition(uri: str, experiment: str, runs: pd.DataFrame) -> tuple[dict, dict]:
    """The sweep's sweep.json (its latest parent run) and the protocol.json of a retrained cell."""
    record, evaluation = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        parent = tracking.latest_parent(uri, experiment)
        if parent is not None:
            path = tracking.download_artifact(uri, parent, schema.SWEEP_ARTIFACT, Path(tmp) / "parent")
            if path is not None:
                record = json.loads(path.read_text())
        if not runs.empty and schema.SWEEP_ROLE in runs:
            retrained = runs[(runs[schema.SWEEP_ROLE] == "retrain") & (runs["status"] == "FINISHED")]
            keys = {k for w in record.get("winners", []) for k in w["retrained"]}
            if keys:
                retrained = retrained[retrained[schema.CELL].isin(keys)]
            if len(retrained):
                run_id = retrained.iloc[0]["run_id"]
                path = tracking.download_artifact(uri, run_id, schema.PROTOCOL_ARTIFACT, Path(tmp) / run_id)
                if path is not None:
                    evaluation = json.loads(path.read_text())
    return record, evaluation

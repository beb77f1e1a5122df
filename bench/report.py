"""Leaderboards from the tracking store (reads MLflow through bench.tracking only; never imports torch).

One section per (dataset, protocol fingerprint): numbers from different protocols never share a table. Rows are
models (one per configuration variant), columns are metrics as mean ± sample std over seeds with the seed count;
the best value per column is marked and rows are ranked by FID.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench import tracking
from bench.tracking import REAL_MODEL

# metric name → (column label, higher is better (None: descriptive, never "best"), decimals)
METRICS: dict[str, tuple[str, bool | None, int]] = {
    "fid": ("FID ↓", False, 2),
    "kid_mean": ("KID ↓", False, 4),
    "is_mean": ("IS ↑", True, 2),
    "precision": ("precision ↑", True, 3),
    "recall": ("recall ↑", True, 3),
    "elbo": ("ELBO ↑", True, 2),
    "nll_iwae": ("NLL (IWAE) ↓", False, 2),
    "bits_per_dim": ("bits/dim ↓", False, 4),
    "recon_psnr": ("recon PSNR ↑", True, 2),
    "recon_ssim": ("recon SSIM ↑", True, 3),
    "rate": ("rate (KL)", None, 2),
    "distortion": ("distortion", None, 2),
}


@dataclass
class Section:
    dataset: str
    protocol: str
    description: str  # the protocol in words
    table: pd.DataFrame  # one row per (model, variant): model, family, variant, n, seeds, <m>_mean, <m>_std
    notes: list[str]


def latest_finished(runs: pd.DataFrame) -> pd.DataFrame:
    """FINISHED cell runs, the most recent per bench.cell hash (a re-run after deleting a run replaces it)."""
    if runs.empty:
        return runs
    done = runs[runs["status"] == "FINISHED"].sort_values("start_time")
    return done.drop_duplicates("bench.cell", keep="last")


CHECKPOINTS = {
    "final": "the final checkpoint (the last training step)",
    "best": "the best checkpoint (lowest periodic FID during training; best/<metric> in MLflow)",
}


def build(runs: pd.DataFrame, checkpoint: str = "final") -> list[Section]:
    """Sections of the leaderboard; `checkpoint` picks the final metrics or those of the best checkpoint."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    runs = latest_finished(runs)
    sections = []
    if runs.empty:
        return sections
    for (dataset, protocol), group in runs.groupby(["bench.dataset", "bench.protocol"], sort=True):
        rows, notes = [], []
        for (model, variant), cell_runs in group.groupby(["bench.model", "bench.variant"], sort=True):
            row = {
                "model": model,
                "best_steps": _steps(cell_runs) if checkpoint == "best" else "",
                "family": cell_runs["bench.family"].iloc[0],
                "variant": variant,
                "n": len(cell_runs),
                "seeds": ",".join(sorted(cell_runs["bench.seed"].astype(str))),
            }
            # the real-data row has no checkpoints: the same numbers under either choice
            prefix = "best/" if checkpoint == "best" and model != REAL_MODEL else ""
            for m in METRICS:
                column = cell_runs.get(f"metrics.{prefix}{m}", pd.Series(dtype=float))
                values = pd.to_numeric(column, errors="coerce").dropna()
                row[f"{m}_mean"] = values.mean() if len(values) else math.nan
                row[f"{m}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
            rows.append(row)
        table = pd.DataFrame(rows)
        multi = table["model"].duplicated(keep=False)
        if multi.any():
            notes.append(
                "Models with several configurations in this table are listed once per variant "
                "(bench.variant tag); compare their params in the MLflow UI."
            )
        table["label"] = [
            f"{m} ({v[:8]})" if dup else m for m, v, dup in zip(table["model"], table["variant"], multi, strict=True)
        ]
        # the real-data reference row first and unranked; models ranked by FID
        table["_real"] = table["family"] == "real"
        table = table.sort_values(["_real", "fid_mean"], ascending=[False, True], na_position="last")
        table = table.drop(columns="_real").reset_index(drop=True)
        real = table["family"] == "real"
        table.insert(0, "rank", ["—" if r else "" for r in real])
        table.loc[~real, "rank"] = [str(i) for i in range(1, int((~real).sum()) + 1)]
        table.loc[real, "label"] = "real data (held-out split)"
        if real.any():
            notes.append(
                "The real-data row scores the held-out real split against the reference split: its FID is the floor "
                "a perfect model reaches with this many images, its IS the real data's. It is not ranked."
            )
        sections.append(Section(dataset, protocol, _describe(group.iloc[-1]), table, notes))
    return sections


def _steps(cell_runs: pd.DataFrame) -> str:
    steps = pd.to_numeric(cell_runs.get("metrics.best/step", pd.Series(dtype=float)), errors="coerce").dropna()
    return ",".join(str(int(s)) for s in steps)


def _describe(run: pd.Series) -> str:
    def p(key: str) -> str:
        return str(run.get(f"params.{key}", "?"))

    return (
        f"extractor `{p('eval.extractor')}`, {p('eval.num_samples')} generated samples vs the "
        f"`{p('eval.reference_split')}` split, IWAE k = {p('eval.iwae_k')} on the test split, "
        f"eval seed {p('eval.seed')}"
    )


def _cell(mean: float, std: float, decimals: int) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.{decimals}f}" if math.isnan(std) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _best(table: pd.DataFrame, metric: str) -> int | None:
    values = table[f"{metric}_mean"]
    values = values[table["family"] != "real"]  # the real-data reference never takes "best"
    if METRICS[metric][1] is None or values.isna().all():  # descriptive columns (rate, distortion): no "best"
        return None
    return int(values.idxmax() if METRICS[metric][1] else values.idxmin())


def to_markdown(suite: str, sections: list[Section], failed: int = 0, checkpoint: str = "final") -> str:
    lines = [f"# Leaderboard — suite `{suite}`", "", f"Metrics of {CHECKPOINTS[checkpoint]}.", ""]
    if not sections:
        lines.append(f"No finished runs in experiment `{suite}` yet: run `bench run --suite {suite}` first.")
    lines += [
        "Mean ± sample standard deviation over seeds (n = number of seeds); **bold** = best in column. "
        "Ranked by FID. Numbers are comparable only within one table (same dataset and protocol).",
        "",
    ]
    for s in sections:
        metrics = [m for m in METRICS if s.table[f"{m}_mean"].notna().any()]
        lines += [f"## {s.dataset} — protocol `{s.protocol}`", "", s.description, ""]
        steps = checkpoint == "best"
        header = ["rank", "model", "n"] + (["best step"] if steps else []) + [METRICS[m][0] for m in metrics]
        lines += [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---:", ":---", "---:"] + ["---:"] * (len(metrics) + steps)) + "|",
        ]
        best = {m: _best(s.table, m) for m in metrics}
        for i, row in s.table.iterrows():
            cells = [str(row["rank"]), row["label"], str(row["n"])] + ([row["best_steps"]] if steps else [])
            for m in metrics:
                text = _cell(row[f"{m}_mean"], row[f"{m}_std"], METRICS[m][2])
                cells.append(f"**{text}**" if best[m] == i and text and len(s.table) > 1 else text)
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"_{n}_" for n in s.notes] + ([""] if s.notes else [])
    if failed:
        lines.append(f"{failed} cell run(s) FAILED and are not in these tables; see their `bench.error` tag in MLflow.")
    return "\n".join(lines).rstrip() + "\n"


def to_csv_frame(sections: list[Section]) -> pd.DataFrame:
    frames = []
    for s in sections:
        t = s.table.drop(columns=["label"]).copy()
        t.insert(0, "protocol", s.protocol)
        t.insert(0, "dataset", s.dataset)
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_report(uri: str, suite: str, out: Path, checkpoint: str = "final") -> dict[str, Path]:
    """Write leaderboard.md and leaderboard.csv for the suite's experiment; returns their paths."""
    runs = tracking.load_runs(uri, suite)
    sections = build(runs, checkpoint)
    failed = 0
    if not runs.empty:  # cells whose runs all failed (a failure later re-run successfully is not counted)
        failed = len(
            set(runs.loc[runs["status"] == "FAILED", "bench.cell"])
            - set(runs.loc[runs["status"] == "FINISHED", "bench.cell"])
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "leaderboard.md", "csv": out / "leaderboard.csv"}
    paths["markdown"].write_text(to_markdown(suite, sections, failed, checkpoint))
    to_csv_frame(sections).to_csv(paths["csv"], index=False)
    return paths

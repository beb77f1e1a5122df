"""The leaderboard's files: `leaderboard.md`, a self-contained `leaderboard.html`, `leaderboard.csv` and the
figures of each section, from the sections bench.report.tables builds (MLflow through bench.tracking only; no torch)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench import schema, tracking
from bench.report import stats
from bench.report.page import to_html
from bench.report.render import to_markdown, to_terminal
from bench.report.tables import Section, build, earlier_protocol
from bench.report.tidy import to_csv_frame, to_tidy_frame


def write_report(
    uri: str,
    suite: str,
    out: Path,
    checkpoint: str = "final",
    published: tuple = (),
    figures: bool = True,
    cells: set[str] | None = None,
) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.html, leaderboard.csv, leaderboard-tidy.csv and figures/ for the suite's
    experiment, and leaderboard.txt (the headline tables, what `bench report` prints); returns {"markdown", "html",
    "csv", "tidy", "text"} and one entry per figure ("figure:<name>"). `cells`: only the model runs of these
    bench.cell keys (a sweep's retrained winners), beside the real-data rows."""
    runs = tracking.load_runs(uri, suite)
    if cells is not None and not runs.empty:
        runs = runs[runs[schema.CELL].isin(cells) | (runs[schema.FAMILY] == "real")]
    sections = build(runs, checkpoint, published)
    earlier = earlier_protocol(runs)
    failed = 0
    if not runs.empty:  # cells whose runs all failed (a failure later re-run successfully is not counted)
        failed = len(
            set(runs.loc[runs["status"] == "FAILED", schema.CELL])
            - set(runs.loc[runs["status"] == "FINISHED", schema.CELL])
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / "leaderboard.md",
        "html": out / "leaderboard.html",
        "csv": out / "leaderboard.csv",
        "tidy": out / "leaderboard-tidy.csv",
        "text": out / "leaderboard.txt",
    }
    if figures:
        for section in sections:
            section.figures = _figures(uri, section, out / "figures")
            paths.update({f"figure:{f.name}": f for _, f in section.figures})
    paths["markdown"].write_text(to_markdown(suite, sections, failed, checkpoint, earlier))
    paths["html"].write_text(to_html(suite, sections, failed, checkpoint, earlier))
    to_csv_frame(sections).to_csv(paths["csv"], index=False)
    to_tidy_frame(suite, sections).to_csv(paths["tidy"], index=False)
    shown = {k: p for k, p in paths.items() if k in ("html", "markdown")}
    paths["text"].write_text(to_terminal(suite, sections, shown, failed, checkpoint, earlier))
    return paths


def _figures(uri: str, section: Section, folder: Path) -> list[tuple[str, Path]]:
    """FID curves, the sample panel and the VAE likelihood chart of one section (those that have data)."""
    from bench.report import figures  # matplotlib only when figures are drawn

    stem = f"{section.dataset}-{section.protocol}"
    runs = section.runs
    models = runs[runs[schema.FAMILY] != "real"]
    labels = dict(zip(section.table["model"] + "|" + section.table["variant"], section.table["label"], strict=True))
    run_label = {
        r["run_id"]: labels.get(f"{r[schema.MODEL]}|{r[schema.VARIANT]}", r[schema.MODEL]) for _, r in runs.iterrows()
    }
    out = []
    histories = tracking.metric_histories(uri, list(models["run_id"]), (schema.PERIODIC_FID, schema.PERIODIC_TRAIN_S))
    path = figures.fid_curves(histories, run_label, section.dataset, folder / f"{stem}-fid.png")
    if path:
        out.append(("FID during training, over steps and wall-clock", path))
    grids = []
    with tempfile.TemporaryDirectory() as tmp:
        for _, row in section.table[section.table["family"] != "published"].iterrows():
            cell_runs = runs[(runs[schema.MODEL] == row["model"]) & (runs[schema.VARIANT] == row["variant"])]
            first = cell_runs.sort_values(schema.SEED).iloc[0]
            grid = tracking.download_artifact(uri, first["run_id"], schema.SAMPLES_FINAL, Path(tmp) / first["run_id"])
            label = row["label"] if row["family"] == "real" else f"{row['label']} (seed {first[schema.SEED]})"
            grids.append((label, grid))
        path = figures.sample_panel(grids, section.dataset, folder / f"{stem}-samples.png")
    if path:
        out.append(("Samples, a row per model", path))
    nearest = []
    with tempfile.TemporaryDirectory() as tmp:
        for _, row in section.table[~section.table["family"].isin(["published", "real"])].iterrows():
            cell_runs = runs[(runs[schema.MODEL] == row["model"]) & (runs[schema.VARIANT] == row["variant"])]
            first = cell_runs.sort_values(schema.SEED).iloc[0]
            panel = tracking.download_artifact(uri, first["run_id"], schema.NEAREST_TRAIN, Path(tmp) / first["run_id"])
            copying = first.get(f"metrics.{schema.COPYING}")
            seed = first[schema.SEED]
            label = row["label"] if seed == "-" else f"{row['label']} (seed {seed})"
            if copying is not None and pd.notna(copying):
                label += f"\nC_T = {copying:.1f}"
            nearest.append((label, panel))
        path = figures.nearest_panel(nearest, section.dataset, folder / f"{stem}-nearest.png")
    if path:
        out.append(("Memorisation check: 8 samples per model (left), each beside its 3 nearest training images", path))
    path = _improvement_figure(section, figures, folder / f"{stem}-improvement.png")
    if path:
        out.append(
            (
                "Probability of improvement on FID between every pair of models, over their seeds, with its 95% "
                "bootstrap interval (seeds resampled on both sides); n seeds per model in the labels",
                path,
            )
        )
    path = figures.likelihood_chart(section.table, section.dataset, folder / f"{stem}-likelihood.png")
    if path:
        out.append(("VAE test likelihood: rate, distortion and the IWAE bound", path))
    path = figures.ais_chart(section.table, section.dataset, folder / f"{stem}-ais.png")
    if path:
        out.append(("GANs and VAEs on one scale: the 8-bit code length by AIS, with the BDMC gap", path))
    return out


def _improvement_figure(section: Section, figures, path: Path) -> Path | None:
    contestants = section.table[~section.table["family"].isin(["real", "published"])]
    samples = section.fid_seeds  # the ranked rows, in table order (published rows come after them)
    n = len(samples)
    matrix, low, high = (np.full((n, n), np.nan) for _ in range(3))
    for i in range(n):
        for j in range(n):
            if i != j:
                matrix[i, j] = stats.probability_of_improvement(samples[i], samples[j])
                low[i, j], high[i, j] = stats.improvement_interval(samples[i], samples[j])
    labels = [f"{label} (n = {len(s)})" for label, s in zip(contestants["label"], samples, strict=True)]
    return figures.improvement_matrix(labels, matrix, section.dataset, path, low, high)

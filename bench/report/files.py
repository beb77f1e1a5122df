"""The leaderboard's files: `leaderboard.md`, a self-contained `leaderboard.html`, `leaderboard.csv` and the
figures of each section, from the sections bench.report builds (MLflow through bench.tracking only; no torch)."""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench import schema, tracking
from bench.report import stats
from bench.report.tables import CHECKPOINTS, METRICS, Section, best_row, build, to_csv_frame, to_markdown, value_text


def write_report(
    uri: str, suite: str, out: Path, checkpoint: str = "final", references: tuple = (), figures: bool = True
) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.html, leaderboard.csv and figures/ for the suite's experiment; returns
    {"markdown", "html", "csv"} and one entry per figure ("figure:<name>")."""
    runs = tracking.load_runs(uri, suite)
    sections = build(runs, checkpoint, references)
    failed = 0
    if not runs.empty:  # cells whose runs all failed (a failure later re-run successfully is not counted)
        failed = len(
            set(runs.loc[runs["status"] == "FAILED", schema.CELL])
            - set(runs.loc[runs["status"] == "FINISHED", schema.CELL])
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "leaderboard.md", "html": out / "leaderboard.html", "csv": out / "leaderboard.csv"}
    if figures:
        for section in sections:
            section.figures = _figures(uri, section, out / "figures")
            paths.update({f"figure:{f.name}": f for _, f in section.figures})
    paths["markdown"].write_text(to_markdown(suite, sections, failed, checkpoint))
    paths["html"].write_text(to_html(suite, sections, failed, checkpoint))
    to_csv_frame(sections).to_csv(paths["csv"], index=False)
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
    histories = tracking.metric_histories(uri, list(models["run_id"]), ("periodic/fid", "periodic/train_s"))
    path = figures.fid_curves(histories, run_label, section.dataset, folder / f"{stem}-fid.png")
    if path:
        out.append(("FID during training, over steps and wall-clock", path))
    grids = []
    with tempfile.TemporaryDirectory() as tmp:
        for _, row in section.table[section.table["family"] != "published"].iterrows():
            cell_runs = runs[(runs[schema.MODEL] == row["model"]) & (runs[schema.VARIANT] == row["variant"])]
            first = cell_runs.sort_values(schema.SEED).iloc[0]
            grid = tracking.download_artifact(uri, first["run_id"], "samples/final.png", Path(tmp) / first["run_id"])
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
        out.append(("Probability of improvement on FID between every pair of models, over their seeds", path))
    path = figures.likelihood_chart(section.table, section.dataset, folder / f"{stem}-likelihood.png")
    if path:
        out.append(("VAE test likelihood: rate, distortion and the IWAE bound", path))
    path = figures.ais_chart(section.table, section.dataset, folder / f"{stem}-ais.png")
    if path:
        out.append(("GANs and VAEs on one scale: NLL by AIS, with the BDMC gap", path))
    return out


def _improvement_figure(section: Section, figures, path: Path) -> Path | None:
    contestants = section.table[~section.table["family"].isin(["real", "published"])]
    samples = section.fid_seeds  # the ranked rows, in table order (published rows come after them)
    n = len(samples)
    matrix = np.full((n, n), np.nan)
    for i in range(n):
        for j in range(n):
            if i != j:
                matrix[i, j] = stats.probability_of_improvement(samples[i], samples[j])
    return figures.improvement_matrix(list(contestants["label"]), matrix, section.dataset, path)


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; padding: 0 1em; }
div.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { cursor: pointer; background: #f4f4f4; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
td.label, th.label { text-align: left; }
tr.real td { background: #eef6ee; }
tr.published td { background: #fbf6e9; font-style: italic; }
td.best { font-weight: bold; }
p.note { font-size: 13px; color: #555; max-width: 1100px; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 3px; }
"""

# Click a column header to sort by it (again to reverse). The real-data row stays first and published rows last:
# they are references, not contestants. Empty cells sort last in both directions.
_HTML_SCRIPT = """
document.querySelectorAll("table.leaderboard").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var top = rows.filter(function (r) { return r.classList.contains("real"); });
      var bottom = rows.filter(function (r) { return r.classList.contains("published"); });
      var rest = rows.filter(function (r) { return top.indexOf(r) < 0 && bottom.indexOf(r) < 0; });
      var numeric = th.dataset.type === "num";
      rest.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        if (x === "" && y === "") return 0;
        if (x === "") return 1;
        if (y === "") return -1;
        var d = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
        return ascending ? d : -d;
      });
      top.concat(rest, bottom).forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def to_html(suite: str, sections: list[Section], failed: int = 0, checkpoint: str = "final") -> str:
    """One self-contained page: inline style and script, figures embedded as data URIs, no network access."""
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Leaderboard — suite {e(suite)}</title><style>{_HTML_STYLE}</style></head><body>",
        f"<h1>Leaderboard — suite <code>{e(suite)}</code></h1>",
        f"<p>Metrics of {e(CHECKPOINTS[checkpoint])}. Mean ± sample standard deviation [95% confidence interval] "
        "over seeds (n = number of seeds); <b>bold</b> = best mean in column; ranked by FID, with ties where seeds "
        "cannot separate models (notes under each table). Click a column header to sort. Numbers are comparable "
        "only within one table (same dataset and protocol).</p>",
    ]
    if not sections:
        parts.append(f"<p>No finished runs in experiment <code>{e(suite)}</code> yet.</p>")
    for s in sections:
        metrics = [m for m in METRICS if s.table[f"{m}_mean"].notna().any()]
        steps = checkpoint == "best"
        parts.append(
            f'<h2 id="{e(s.dataset)}-{e(s.protocol)}">{e(s.dataset)} — protocol <code>{e(s.protocol)}</code></h2>'
        )
        parts.append(f"<p>{e(s.description).replace('`', '')}</p>")
        head = ['<th data-type="num">rank</th>', '<th class="label" data-type="text">model</th>']
        head.append('<th data-type="num">n</th>')
        if steps:
            head.append('<th data-type="text">best step (selected on periodic FID)</th>')
        head += [f'<th data-type="num" data-metric="{m}">{e(s.label(m))}</th>' for m in metrics]
        parts.append(f'<div class="scroll"><table class="leaderboard"><thead><tr>{"".join(head)}</tr></thead><tbody>')
        best = {m: best_row(s.table, m) for m in metrics}
        for i, row in s.table.iterrows():
            kind = {"real": "real", "published": "published"}.get(row["family"], "model")
            rank = str(row["rank"]).rstrip("=") if str(row["rank"]).rstrip("=").isdigit() else ""
            cells = [
                f'<td data-value="{e(rank)}">{e(str(row["rank"]))}</td>',
                f'<td class="label" data-value="{e(row["label"])}">{e(row["label"])}</td>',
                f'<td data-value="{e(str(row["n"]))}">{e(str(row["n"]))}</td>',
            ]
            if steps:
                cells.append(f'<td data-value="{e(row["best_steps"])}">{e(row["best_steps"])}</td>')
            for m in metrics:
                mean = row[f"{m}_mean"]
                value = "" if pd.isna(mean) else repr(float(mean))
                cls = ' class="best"' if best[m] == i and len(s.table) > 1 and value else ""
                cells.append(f'<td{cls} data-value="{value}">{e(value_text(row, m))}</td>')
            parts.append(f'<tr class="{kind}">{"".join(cells)}</tr>')
        parts.append("</tbody></table></div>")
        parts += [f'<p class="note">{e(n).replace("*", "")}</p>' for n in s.notes]
        for caption, figure in s.figures:
            data = base64.b64encode(Path(figure).read_bytes()).decode()
            parts.append(
                f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
    if failed:
        parts.append(f"<p>{failed} cell run(s) FAILED and are not in these tables; see their bench.error tag.</p>")
    parts.append(f"<script>{_HTML_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"

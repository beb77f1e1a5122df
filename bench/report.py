"""Leaderboards from the tracking store (reads MLflow through bench.tracking only; never imports torch).

One section per (dataset, protocol fingerprint): numbers from different protocols never share a table. Rows are
models (one per configuration variant), columns are metrics as mean ± sample std over seeds with the seed count;
the best value per column is marked and rows are ranked by FID.
"""

from __future__ import annotations

import base64
import html
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench import schema, tracking
from bench.schema import REAL_MODEL

METRICS = schema.LEADERBOARD  # metric key → its column label, direction and decimals


@dataclass
class Section:
    dataset: str
    protocol: str
    description: str  # the protocol in words
    table: pd.DataFrame  # one row per (model, variant): model, family, variant, n, seeds, <m>_mean, <m>_std
    notes: list[str]
    runs: pd.DataFrame  # the finished runs behind the table (for figures)
    extractor: str = ""
    figures: list[tuple[str, Path]] = field(default_factory=list)  # (caption, PNG path)


def latest_finished(runs: pd.DataFrame) -> pd.DataFrame:
    """FINISHED cell runs, the most recent per bench.cell hash (a re-run after deleting a run replaces it)."""
    if runs.empty:
        return runs
    done = runs[runs["status"] == "FINISHED"].sort_values("start_time")
    return done.drop_duplicates(schema.CELL, keep="last")


CHECKPOINTS = schema.CHECKPOINTS


def build(runs: pd.DataFrame, checkpoint: str = "final", references: tuple = ()) -> list[Section]:
    """Sections of the leaderboard; `checkpoint` picks the final metrics or those of the best checkpoint.
    `references` (bench.config.PublishedReference) add published rows where dataset, metric and extractor match."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    runs = latest_finished(runs)
    sections = []
    if runs.empty:
        return sections
    for (dataset, protocol), group in runs.groupby([schema.DATASET, schema.PROTOCOL], sort=True):
        rows, notes = [], []
        for (model, variant), cell_runs in group.groupby([schema.MODEL, schema.VARIANT], sort=True):
            row = {
                "model": model,
                "best_steps": _steps(cell_runs) if checkpoint == "best" else "",
                "family": cell_runs[schema.FAMILY].iloc[0],
                "variant": variant,
                "n": len(cell_runs),
                "seeds": ",".join(sorted(cell_runs[schema.SEED].astype(str))),
            }
            # the real-data row has no checkpoints: the same numbers under either choice
            prefix = schema.BEST_PREFIX if checkpoint == "best" and model != REAL_MODEL else ""
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
                "Models with several configurations in this table are listed once per variant (bench.variant tag), "
                "labelled by the params in which their variants differ; compare all params in the MLflow UI."
            )
        table["label"] = [
            f"{m} ({variant_label(group, m, v)})" if dup else m
            for m, v, dup in zip(table["model"], table["variant"], multi, strict=True)
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
        if group.get("metrics.nll_ais", pd.Series(dtype=float)).notna().any():
            notes.append(
                "NLL (AIS): annealed importance sampling (Wu et al. 2017) of GANs and VAEs alike, in nats of a "
                "Gaussian density N(f(z), σ²I) over pixels in [0, 1], σ chosen per model on held-out test images; "
                "bits/dim (AIS) is the same density on the 0–256 scale. AIS bounds log p(x) from below "
                "(stochastically), so NLL (AIS) is an upper bound; the BDMC gap (upper − lower bound on data simulated "
                "from the model) says how loose it can be. Not comparable with NLL (IWAE), a Bernoulli likelihood of "
                "binarised pixels."
            )
        extractor = str(group.iloc[-1].get("params.eval.extractor", ""))
        published = [
            r
            for r in references
            if r.dataset == dataset and (not r.extractor or r.extractor == extractor) and r.metric in METRICS
        ]
        if published:
            table = pd.concat([table, _published_rows(published)], ignore_index=True)
            notes.append(
                "Rows marked *published* are numbers from papers, measured under their own protocols (below); "
                "they are never ranked with genbench's rows:"
            )
            notes += [f"[{i}] {r.model}: {r.citation} — {r.protocol}" for i, r in enumerate(published, 1)]
        sections.append(Section(dataset, protocol, _describe(group.iloc[-1]), table, notes, group, extractor))
    return sections


# params that are the same for every variant of a cell by construction, or not config at all
_NOT_VARIANT = ("params.cell.", "params.overrides", "params.executor", "params.cells", "params.suite")


def variant_label(group: pd.DataFrame, model: str, variant: str, most: int = 3) -> str:
    """What sets this variant apart from the model's other variants in `group`: the params whose values differ
    among them, as `key=value` (at most `most`, then "+N more"); the variant hash's first 8 characters when no
    param differs (e.g. a store written before a param existed)."""
    runs = group[group[schema.MODEL] == model]
    first = runs.drop_duplicates(schema.VARIANT).set_index(schema.VARIANT)
    keys = [c for c in first.columns if c.startswith("params.") and not c.startswith(_NOT_VARIANT)]
    values = first[keys].astype(str)  # NaN (a param one variant lacks) reads "nan"
    differ = [k for k in keys if values[k].nunique() > 1]
    if not differ:
        return variant[:8]
    parts = [f"{k.removeprefix('params.')}={values.at[variant, k]}" for k in sorted(differ)]
    return ", ".join(parts[:most]) + (f", +{len(parts) - most} more" if len(parts) > most else "")


def _published_rows(published: list) -> pd.DataFrame:
    rows = []
    for i, r in enumerate(published, 1):
        row = {"rank": "—", "model": r.model, "family": "published", "variant": "", "n": "", "seeds": ""}
        row["label"] = f"published: {r.model} [{i}]"
        row["best_steps"] = ""
        for m in METRICS:
            row[f"{m}_mean"] = r.value if m == r.metric else math.nan
            row[f"{m}_std"] = (r.std if r.std is not None else math.nan) if m == r.metric else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


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
        + (
            f"; AIS on {p('eval.ais.images')} test images, {p('eval.ais.chains')} chains, {p('eval.ais.steps')} "
            f"{p('eval.ais.schedule')}-scheduled distributions, {p('eval.ais.leapfrog')} leapfrog steps"
            if p("eval.ais.images") not in ("?", "0")
            else ""
        )
    )


def _value_text(row: pd.Series, metric: str) -> str:
    """A table cell: mean ± std with the metric's decimals; published numbers exactly as the paper gives them."""
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if row["family"] == "published":
        if pd.isna(mean):
            return ""
        return f"{mean:g}" if pd.isna(std) else f"{mean:g} ± {std:g}"
    return _cell(mean, std, METRICS[metric].decimals)


def _cell(mean: float, std: float, decimals: int) -> str:
    if math.isnan(mean):
        return ""
    return f"{mean:.{decimals}f}" if math.isnan(std) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _best(table: pd.DataFrame, metric: str) -> int | None:
    values = table[f"{metric}_mean"]
    values = values[~table["family"].isin(["real", "published"])]  # reference rows never take "best"
    if METRICS[metric].higher_is_better is None or values.isna().all():  # descriptive (rate, distortion): no best
        return None
    return int(values.idxmax() if METRICS[metric].higher_is_better else values.idxmin())


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
        header = ["rank", "model", "n"] + (["best step"] if steps else []) + [METRICS[m].label for m in metrics]
        lines += [
            "| " + " | ".join(header) + " |",
            "|" + "|".join(["---:", ":---", "---:"] + ["---:"] * (len(metrics) + steps)) + "|",
        ]
        best = {m: _best(s.table, m) for m in metrics}
        for i, row in s.table.iterrows():
            published = row["family"] == "published"
            label = f"*{row['label']}*" if published else row["label"]
            cells = [str(row["rank"]), label, str(row["n"])] + ([row["best_steps"]] if steps else [])
            for m in metrics:
                text = _value_text(row, m)
                cells.append(f"**{text}**" if best[m] == i and text and len(s.table) > 1 else text)
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"_{n}_" for n in s.notes] + ([""] if s.notes else [])
        for caption, figure in s.figures:
            lines += [f"![{caption}](figures/{figure.name})", ""]
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
    from bench import figures  # matplotlib only when figures are drawn

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
    path = figures.likelihood_chart(section.table, section.dataset, folder / f"{stem}-likelihood.png")
    if path:
        out.append(("VAE test likelihood: rate, distortion and the IWAE bound", path))
    path = figures.ais_chart(section.table, section.dataset, folder / f"{stem}-ais.png")
    if path:
        out.append(("GANs and VAEs on one scale: NLL by AIS, with the BDMC gap", path))
    return out


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
        f"<p>Metrics of {e(CHECKPOINTS[checkpoint])}. Mean ± sample standard deviation over seeds (n = number of "
        "seeds); <b>bold</b> = best in column; ranked by FID. Click a column header to sort. Numbers are comparable "
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
            head.append('<th data-type="text">best step</th>')
        head += [f'<th data-type="num" data-metric="{m}">{e(METRICS[m].label)}</th>' for m in metrics]
        parts.append(f'<div class="scroll"><table class="leaderboard"><thead><tr>{"".join(head)}</tr></thead><tbody>')
        best = {m: _best(s.table, m) for m in metrics}
        for i, row in s.table.iterrows():
            kind = {"real": "real", "published": "published"}.get(row["family"], "model")
            rank = row["rank"] if str(row["rank"]).isdigit() else ""
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
                cells.append(f'<td{cls} data-value="{value}">{e(_value_text(row, m))}</td>')
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

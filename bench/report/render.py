"""The leaderboard as text: markdown, a self-contained HTML page and CSV, from the sections bench.report.tables builds.
Both tables come from one walk over a section (`table_rows`): the same columns, ranks, bold best and cell texts.
Torch-free."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.report.tables import CHECKPOINTS, METRICS, Section, value_text

STEPS_HEADER = "best step (selected on periodic FID)"


@dataclass
class Column:
    header: str
    numeric: bool
    metric: str = ""


@dataclass
class Entry:
    text: str  # what the table shows
    value: str  # what the HTML table sorts by ("" = empty, sorts last)
    best: bool = False


@dataclass
class Row:
    kind: str  # real | published | model
    entries: list[Entry]


def tied_best(table: pd.DataFrame, metric: str) -> list[int]:
    """The rows marked best in a metric's column: every ranked model that no other model beats on it (the section's
    `<metric>_best`, by the tests of the ranks); none for descriptive metrics or rows without a value."""
    if METRICS[metric].higher_is_better is None or f"{metric}_best" not in table:
        return []
    marked = table[f"{metric}_best"].fillna(False).astype(bool) & table[f"{metric}_mean"].notna()
    return [int(i) for i in table.index[marked]]


def table_rows(s: Section, checkpoint: str) -> tuple[list[Column], list[Row]]:
    """The columns and rows of a section's table, as both renderings show them."""
    metrics = [m for m in METRICS if s.table[f"{m}_mean"].notna().any()]
    steps = checkpoint == "best"
    columns = [Column("rank", True), Column("group", False), Column("model", False), Column("n", True)]
    columns += [Column(STEPS_HEADER, False)] if steps else []
    columns += [Column(s.label(m), True, m) for m in metrics]
    best = {m: set(tied_best(s.table, m)) for m in metrics}
    rows = []
    for i, row in s.table.iterrows():
        rank = str(row["rank"])
        entries = [
            Entry(rank, rank.split("–")[0] if rank.split("–")[0].isdigit() else ""),
            Entry(_text(row.get("group")), _text(row.get("group"))),
            Entry(row["label"], row["label"]),
            Entry(str(row["n"]), str(row["n"])),
        ]
        if steps:
            entries.append(Entry(row["best_steps"], row["best_steps"]))
        for m in metrics:
            mean = row[f"{m}_mean"]
            value = "" if pd.isna(mean) else repr(float(mean))
            text = value_text(row, m)
            entries.append(Entry(text, value, i in best[m] and bool(text)))
        rows.append(Row({"real": "real", "published": "published"}.get(row["family"], "model"), entries))
    return columns, rows


def _text(value) -> str:
    """A table cell's text: "" for a missing value (NaN, None)."""
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def _intro(checkpoint: str) -> list[str]:
    return [
        f"Metrics of {CHECKPOINTS[checkpoint]}.",
        "Mean ± sample standard deviation [95% confidence interval] over seeds (n = number of seeds); **bold** = tied "
        "for best in its column. Ranked by FID; a rank range and a shared group letter mean the seeds cannot separate "
        "those models (tests and error control in the notes under each table). "
        "Numbers are comparable only within one table (same dataset and protocol).",
    ]


def _footer(suite: str, failed: int, earlier: int) -> list[str]:
    lines = []
    if failed:
        lines.append(f"{failed} cell run(s) FAILED and are not in these tables; see their `bench.error` tag in MLflow.")
    if earlier:
        lines.append(
            f"{earlier} run(s) of an earlier protocol version are not shown; `bench run --suite {suite}` re-runs "
            "their cells under the current one."
        )
    return lines


def to_markdown(suite: str, sections: list[Section], failed: int = 0, checkpoint: str = "final", earlier: int = 0):
    first, rest = _intro(checkpoint)
    lines = [f"# Leaderboard — suite `{suite}`", "", first, ""]
    if not sections:
        lines.append(f"No finished runs in experiment `{suite}` yet: run `bench run --suite {suite}` first.")
    lines += [rest, ""]
    for s in sections:
        columns, rows = table_rows(s, checkpoint)
        lines += [f"## {s.dataset} — protocol `{s.protocol}`", "", s.description, ""]
        lines += [
            "| " + " | ".join(c.header for c in columns) + " |",
            "|" + "|".join("---:" if c.numeric else ":---" for c in columns) + "|",
        ]
        for row in rows:
            cells = [f"**{e.text}**" if e.best else e.text for e in row.entries]
            if row.kind == "published":
                label = next(i for i, c in enumerate(columns) if c.header == "model")
                cells[label] = f"*{cells[label]}*"
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""] + [f"_{n}_" for n in s.notes] + ([""] if s.notes else [])
        for caption, figure in s.figures:
            lines += [f"![{caption}](figures/{figure.name})", ""]
    lines += _footer(suite, failed, earlier)
    return "\n".join(lines).rstrip() + "\n"


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


def to_html(suite: str, sections: list[Section], failed: int = 0, checkpoint: str = "final", earlier: int = 0):
    """One self-contained page: inline style and script, figures embedded as data URIs, no network access."""
    e = html.escape
    intro = e(" ".join(_intro(checkpoint))).replace("**bold**", "<b>bold</b>")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Leaderboard — suite {e(suite)}</title><style>{_HTML_STYLE}</style></head><body>",
        f"<h1>Leaderboard — suite <code>{e(suite)}</code></h1>",
        f"<p>{intro} Click a column header to sort.</p>",
    ]
    if not sections:
        parts.append(f"<p>No finished runs in experiment <code>{e(suite)}</code> yet.</p>")
    for s in sections:
        columns, rows = table_rows(s, checkpoint)
        parts.append(
            f'<h2 id="{e(s.dataset)}-{e(s.protocol)}">{e(s.dataset)} — protocol <code>{e(s.protocol)}</code></h2>'
        )
        parts.append(f"<p>{e(s.description).replace('`', '')}</p>")
        head = "".join(_th(c) for c in columns)
        parts.append(f'<div class="scroll"><table class="leaderboard"><thead><tr>{head}</tr></thead><tbody>')
        for row in rows:
            cells = []
            for c, entry in zip(columns, row.entries, strict=True):
                cls = ' class="label"' if c.header == "model" else (' class="best"' if entry.best else "")
                cells.append(f'<td{cls} data-value="{e(entry.value)}">{e(entry.text)}</td>')
            parts.append(f'<tr class="{row.kind}">{"".join(cells)}</tr>')
        parts.append("</tbody></table></div>")
        parts += [f'<p class="note">{e(n).replace("*", "")}</p>' for n in s.notes]
        for caption, figure in s.figures:
            data = base64.b64encode(Path(figure).read_bytes()).decode()
            parts.append(
                f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
    parts += [f"<p>{e(line).replace('`', '')}</p>" for line in _footer(suite, failed, earlier)]
    parts.append(f"<script>{_HTML_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


def _th(c: Column) -> str:
    label = ' class="label"' if c.header == "model" else ""
    metric = f' data-metric="{c.metric}"' if c.metric else ""
    return f'<th{label} data-type="{"num" if c.numeric else "text"}"{metric}>{html.escape(c.header)}</th>'


def to_csv_frame(sections: list[Section]) -> pd.DataFrame:
    frames = []
    for s in sections:
        t = s.table.drop(columns=["label"]).copy()
        t.insert(0, "protocol", s.protocol)
        t.insert(0, "dataset", s.dataset)
        frames.append(t)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

"""The leaderboard as text: the markdown file and what `bench report` prints, from the tables bench.report.layout
lays out (the HTML page is bench.report.page, the CSV files bench.report.tidy). Torch-free."""

from __future__ import annotations

from pathlib import Path

from bench.report import across, layout
from bench.report.tables import CHECKPOINTS, Section


def intro(checkpoint: str) -> list[str]:
    return [
        f"Metrics of {CHECKPOINTS[checkpoint]}.",
        "Mean ± sample standard deviation over seeds (n = number of seeds); **bold** = tied for best in its column. "
        "Ranked by FID; a rank range and a shared group letter mean the seeds cannot separate those models (tests "
        "and error control in the notes under each headline table). Numbers are comparable only within one section "
        "(same dataset and protocol). Each section opens with its headline table; the 95% intervals, the sample "
        "diagnostics and the likelihoods follow it.",
    ]


def footer(suite: str, failed: int, earlier: int) -> list[str]:
    lines = []
    if failed:
        lines.append(f"{failed} cell run(s) FAILED and are not in these tables; see their `bench.error` tag in MLflow.")
    if earlier:
        lines.append(
            f"{earlier} run(s) of an earlier protocol version are not shown; `bench run --suite {suite}` re-runs "
            "their cells under the current one."
        )
    return lines


def heading(s: Section) -> str:
    return f"{s.dataset} — protocol `{s.protocol}`"


def markdown_table(table: layout.Table) -> list[str]:
    columns = table.columns
    lines = [
        "| " + " | ".join(c.header for c in columns) + " |",
        "|" + "|".join("---:" if c.numeric else ":---" for c in columns) + "|",
    ]
    label = next(i for i, c in enumerate(columns) if c.header == "model")
    for row in table.rows:
        cells = [f"**{e.text}**" if e.best else e.text for e in row.entries]
        if row.kind == "published":
            cells[label] = f"*{cells[label]}*"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def to_markdown(suite: str, sections: list[Section], failed: int = 0, checkpoint: str = "final", earlier: int = 0):
    first, rest = intro(checkpoint)
    lines = [f"# Leaderboard — suite `{suite}`", "", first, ""]
    if not sections:
        lines.append(f"No finished runs in experiment `{suite}` yet: run `bench run --suite {suite}` first.")
    lines += [rest, ""]
    laid = [(s, layout.tables(s, checkpoint)) for s in sections]
    overall = across.table(sections)
    if len(laid) > 1:
        lines += ["Contents:", ""] + (["- Across datasets"] if overall else [])
        lines += [f"- {heading(s)}: " + " · ".join(t.title for t in ts) for s, ts in laid] + [""]
    if overall:
        lines += [f"## {overall.title}", "", overall.spec.about, ""] + markdown_table(overall) + [""]
        lines += [f"_{n}_" for n in overall.notes] + [""]
    for s, ts in laid:
        lines += [f"## {heading(s)}", "", s.description, ""]
        for table in ts:
            lines += [f"### {table.title}", ""] + ([table.spec.about, ""] if table.spec.about else [])
            lines += markdown_table(table) + [""]
            lines += [f"_{n}_" for n in table.notes] + ([""] if table.notes else [])
            for caption, figure in table.figures:
                lines += [f"![{caption}](figures/{Path(figure).name})", ""]
    lines += footer(suite, failed, earlier)
    return "\n".join(lines).rstrip() + "\n"


def to_terminal(
    suite: str,
    sections: list[Section],
    paths: dict[str, Path],
    failed: int = 0,
    checkpoint: str = "final",
    earlier: int = 0,
) -> str:
    """What `bench report` prints: each section's headline table, and where the rest is."""
    lines = [
        f"Leaderboard — suite {suite}: {CHECKPOINTS[checkpoint]}; mean ± sd over seeds, **bold** tied for best",
        "",
    ]
    if not sections:
        lines.append(f"No finished runs in experiment `{suite}` yet: run `bench run --suite {suite}` first.")
    overall = across.table(sections)
    if overall:
        lines += [f"## {overall.title}", overall.spec.about, ""] + markdown_table(overall) + [""]
    for s in sections:
        ts = layout.tables(s, checkpoint)
        lines += [f"## {heading(s)}", s.description, ""]
        if ts:
            lines += markdown_table(ts[0]) + [""]
        contestants = s.table[~s.table["family"].isin(["real", "published"])]
        if len(contestants) and (contestants["n"].astype(int) < 2).all():
            lines += ["n = 1 seed per model: nothing is ranked (run more seeds to separate models).", ""]
        if len(ts) > 1:
            lines += ["Further tables: " + "; ".join(t.title for t in ts[1:]) + ".", ""]
    lines += footer(suite, failed, earlier)
    where = [str(paths[k]) for k in ("html", "markdown") if k in paths]
    if where:
        lines.append("The whole report (every table, its notes and figures): " + " and ".join(where))
    return "\n".join(lines).rstrip() + "\n"

"""The leaderboard as one self-contained HTML page (inline style and script, figures as data URIs, no network):
an index of sections and tables, each table under its heading with a sticky header and model column, its notes
folded a line each, its figures beside it. Torch-free."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from bench.report import across, layout, render
from bench.report.tables import Section

_STICKY_WIDTH_EM = {"rank": 4.0, "group": 4.0}  # the sticky columns before the model column have fixed widths

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222; padding: 0 1em; }
nav { font-size: 14px; background: #f7f7f7; padding: 0.5em 1em; border-radius: 4px; }
nav ul { margin: 0.3em 0; padding-left: 1.2em; }
h2 { margin-top: 2em; border-bottom: 2px solid #ddd; }
h3 { margin: 1.5em 0 0.3em; font-size: 1.05em; }
p.about { margin: 0.2em 0; font-size: 13px; color: #555; }
div.scroll { overflow: auto; max-height: 80vh; max-width: 100%; }
table { border-collapse: separate; border-spacing: 0; margin: 0.5em 0; font-size: 14px; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; background: #fff; }
th { cursor: pointer; background: #f4f4f4; user-select: none; position: sticky; top: 0; z-index: 2;
     white-space: normal; vertical-align: bottom; min-width: 4em; }
th[aria-sort="ascending"]::after { content: " \\25B2"; }
th[aria-sort="descending"]::after { content: " \\25BC"; }
.sticky { position: sticky; z-index: 1; box-sizing: border-box; }
th.sticky { z-index: 3; }
td.label, th.label { text-align: left; white-space: normal; min-width: 11em; max-width: 18em; }
td.label { border-right: 1px solid #ccc; }
tr.real td { background: #eef6ee; }
tr.published td { background: #fbf6e9; font-style: italic; }
td.best { font-weight: bold; }
details.note { font-size: 13px; color: #555; max-width: 1100px; margin: 0.2em 0; }
details.note summary { cursor: pointer; }
details.note p { margin: 0.3em 0 0.6em 1.2em; }
div.figures { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0.5em 0; flex: 1 1 420px; max-width: 680px; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; }
code { background: #f4f4f4; padding: 0 3px; }
@media (max-width: 600px) {
  body { padding: 0 0.4em; } table { font-size: 12px; } td.label, th.label { min-width: 7em; max-width: 9em; }
  th.sticky:not(.label), td.sticky:not(.label) { position: static; }  /* on a phone only the model column stays */
  th.label.sticky, td.label.sticky { left: 0 !important; }
}
"""

# Click a column header to sort by it (again to reverse). The real-data row stays first and published rows last:
# they are references, not contestants. Empty cells sort last in both directions.
_SCRIPT = """
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
    e = html.escape
    first, rest = render.intro(checkpoint)
    intro = e(f"{first} {rest}").replace("**bold**", "<b>bold</b>")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Leaderboard — suite {e(suite)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Leaderboard — suite <code>{e(suite)}</code></h1>",
        f"<p>{intro} Hover a value for its 95% interval; click a column header to sort.</p>",
    ]
    if not sections:
        parts.append(f"<p>No finished runs in experiment <code>{e(suite)}</code> yet.</p>")
    laid = [(f"s{i}", s, layout.tables(s, checkpoint)) for i, s in enumerate(sections)]
    overall = across.table(sections)
    if laid:
        items = [f'<li><a href="#{overall.anchor}">{overall.title}</a></li>'] if overall else []
        for sid, s, ts in laid:
            links = " · ".join(f'<a href="#{sid}-{t.anchor}">{_inline(t.title)}</a>' for t in ts)
            items.append(f'<li><a href="#{sid}">{_inline(render.heading(s))}</a>: {links}</li>')
        parts.append(f"<nav><b>Contents</b><ul>{''.join(items)}</ul></nav>")
    if overall:
        parts.append(f'<h2 id="{overall.anchor}-section">{overall.title}</h2>')
        parts += _table(overall.anchor, overall, heading=False)
    for sid, s, ts in laid:
        parts.append(f'<h2 id="{sid}">{_inline(render.heading(s))}</h2>')
        parts.append(f"<p>{_inline(s.description)}</p>")
        for t in ts:
            parts += _table(f"{sid}-{t.anchor}", t)
    parts += [f"<p>{_inline(line)}</p>" for line in render.footer(suite, failed, earlier)]
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"


def _table(anchor: str, t: layout.Table, heading: bool = True) -> list[str]:
    e = html.escape
    parts = [f'<h3 id="{anchor}">{_inline(t.title)}</h3>' if heading else f'<span id="{anchor}"></span>']
    if t.spec.about:
        parts.append(f'<p class="about">{_inline(t.spec.about)}</p>')
    offsets, left = [], 0.0
    for c in t.columns:
        offsets.append(left if c.sticky else None)
        left += _STICKY_WIDTH_EM.get(c.header, 0.0) if c.sticky else 0.0
    head = "".join(_th(c, offset) for c, offset in zip(t.columns, offsets, strict=True))
    parts.append(
        f'<div class="scroll"><table class="leaderboard" data-table="{e(t.anchor)}"><thead><tr>{head}</tr></thead>'
        "<tbody>"
    )
    for row in t.rows:
        cells = []
        for c, offset, entry in zip(t.columns, offsets, row.entries, strict=True):
            classes = (["label"] if c.header == "model" else []) + (["best"] if entry.best else [])
            classes += ["sticky"] if offset is not None else []
            attrs = f' class="{" ".join(classes)}"' if classes else ""
            attrs += _sticky_style(c, offset)
            attrs += f' title="{e(entry.title)}"' if entry.title else ""
            cells.append(f'<td{attrs} data-value="{e(entry.value)}">{e(entry.text)}</td>')
        parts.append(f'<tr class="{row.kind}">{"".join(cells)}</tr>')
    parts.append("</tbody></table></div>")
    parts += [_note(n) for n in t.notes]
    if t.figures:
        parts.append('<div class="figures">')
        for caption, figure in t.figures:
            data = base64.b64encode(Path(figure).read_bytes()).decode()
            parts.append(
                f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    return parts


def _sticky_style(c: layout.Column, offset: float | None) -> str:
    if offset is None:
        return ""
    width = _STICKY_WIDTH_EM.get(c.header)
    size = f" width: {width}em; min-width: {width}em; max-width: {width}em;" if width else ""
    return f' style="left: {offset}em;{size}"'


def _th(c: layout.Column, offset: float | None) -> str:
    classes = (["label"] if c.header == "model" else []) + (["sticky"] if offset is not None else [])
    cls = f' class="{" ".join(classes)}"' if classes else ""
    metric = f' data-metric="{c.metric}"' if c.metric else ""
    kind = "num" if c.numeric else "text"
    return f'<th{cls}{_sticky_style(c, offset)} data-type="{kind}"{metric}>{html.escape(c.header)}</th>'


def _note(text: str) -> str:
    """A note folded to its first sentence; the whole text on a click."""
    plain = text.replace("**", "").replace("*", "")
    match = re.match(r"(.{30,200}?(?<! al)(?<!e\.g)(?<!i\.e)[.:])(\s+(?=[A-Z(\[⚠])|$)", plain)
    summary = match.group(1) if match else (plain[:120] + "…" if len(plain) > 120 else plain)
    if summary == plain:
        return f'<p class="about">{_inline(plain)}</p>'
    return f'<details class="note"><summary>{_inline(summary)}</summary><p>{_inline(plain)}</p></details>'


def _inline(text: str) -> str:
    """Escaped text with `code` spans."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))

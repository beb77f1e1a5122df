"""Which tables a leaderboard section shows, and what is in them: one walk over a section, shared by the markdown,
HTML and terminal renderings (torch-free).

Every section opens with its **headline** table (rank, group, model, n, and the few columns a reader came for: FID
and KID in the suite's first encoder, precision, recall, and the likelihood that applies to every row), followed by
the intervals of those numbers and the further tables (sample diagnostics, other encoders, likelihoods,
reconstructions). A column that one family of models leaves empty is not shown in a table that holds the other
family's rows, unless the table is that family's own (its `families`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from bench import schema
from bench.report.tables import COPYING_EFFECT, METRICS, Section

MODEL_FAMILIES = ("gan", "vae")  # families whose empty columns a mixed table drops (the rule above)


@dataclass(frozen=True)
class Spec:
    key: str  # the anchor of the table in the HTML page
    title: str
    about: str  # one line under the title
    metrics: tuple[str, ...]
    families: tuple[str, ...] = ()  # only rows of these families (a family's own table); () = every row
    intervals: bool = False  # cells are the 95% intervals of the means, not mean ± sd
    group: bool = False  # the group-letter column (the headline's)


HEADLINE = (
    schema.FID,
    schema.KID_MEAN,
    schema.PRECISION,
    schema.RECALL,
    schema.BITS_PER_DIM_AIS,
    schema.BITS_PER_DIM,
)
SAMPLE_DIAGNOSTICS = (
    schema.FID_INF,
    schema.FID_INF_SE,
    schema.FID_MATCHED,
    schema.IS_MEAN,
    schema.DENSITY,
    schema.COVERAGE,
    schema.COPYING,
    COPYING_EFFECT,
)
IN_OTHER_ENCODERS = (
    schema.FID,
    schema.FID_INF,
    schema.KID_MEAN,
    schema.PRECISION,
    schema.RECALL,
    schema.DENSITY,
    schema.COVERAGE,
    schema.COPYING,
)
SPECS = (
    Spec("headline", "Headline", "", HEADLINE, group=True),
    Spec(
        "intervals",
        "95% intervals of the headline numbers",
        "Student-t intervals of the mean over seeds (n − 1 degrees of freedom), cut at the metric's range (†).",
        HEADLINE,
        intervals=True,
    ),
    Spec("samples", "Sample diagnostics", "", SAMPLE_DIAGNOSTICS),
    Spec(
        "ais",
        "Likelihood of both families: 8-bit code length by AIS",
        "One observation model for GANs and VAEs (discretised Gaussian around the decoder's mean image).",
        (schema.NLL_AIS, schema.BITS_PER_DIM_AIS, schema.AIS_SIGMA, schema.AIS_BDMC_GAP),
    ),
    Spec(
        "vae",
        "VAE likelihood under each VAE's own decoder",
        "The IWAE bound and its parts; VAE rows only.",
        (schema.ELBO, schema.NLL_IWAE, schema.BITS_PER_DIM, schema.RATE, schema.DISTORTION, schema.AIS_OWN_GAP),
        families=("vae",),
    ),
    Spec(
        "reconstructions",
        "VAE reconstructions of test images",
        "VAE rows only.",
        (schema.RECON_PSNR, schema.RECON_SSIM),
        families=("vae",),
    ),
)

# shorter headers than the schema's where a table has room for little
SHORT = {
    schema.NLL_AIS: "code length (AIS), nats ↓",
    schema.BITS_PER_DIM_AIS: "bits/pixel (AIS) ↓",
    schema.AIS_OWN_GAP: "VAE check: AIS − IWAE, nats",
    schema.FID_MATCHED: "FID at the real row's N ↓",
}

# the range a metric's true value lies in: its interval is cut there (marked †)
RANGE = {
    schema.FID: (0.0, None),
    schema.FID_INF: (0.0, None),
    schema.FID_MATCHED: (0.0, None),
    schema.KID_MEAN: (0.0, None),
    schema.IS_MEAN: (1.0, None),
    schema.PRECISION: (0.0, 1.0),
    schema.RECALL: (0.0, 1.0),
    schema.COVERAGE: (0.0, 1.0),
    schema.DENSITY: (0.0, None),
    schema.NLL_AIS: (0.0, None),
    schema.BITS_PER_DIM_AIS: (0.0, None),
    schema.BITS_PER_DIM: (0.0, None),
    schema.NLL_IWAE: (0.0, None),
    schema.ELBO: (None, 0.0),
    schema.RATE: (0.0, None),
    schema.DISTORTION: (0.0, None),
    schema.RECON_SSIM: (-1.0, 1.0),
}

# which table each figure of a section explains (by the figure file's suffix)
FIGURE_TABLE = {
    "-fid.png": "headline",
    "-samples.png": "headline",
    "-improvement.png": "headline",
    "-nearest.png": "samples",
    "-ais.png": "ais",
    "-likelihood.png": "vae",
}


@dataclass
class Column:
    header: str
    numeric: bool
    metric: str = ""
    sticky: bool = False  # rank, group and model stay in view when a wide table scrolls


@dataclass
class Entry:
    text: str  # what the table shows
    value: str  # what the HTML table sorts by ("" = empty, sorts last)
    best: bool = False
    title: str = ""  # what the HTML page shows on hover (the interval)


@dataclass
class Row:
    kind: str  # real | published | model
    entries: list[Entry]


@dataclass
class Table:
    spec: Spec
    title: str
    columns: list[Column]
    rows: list[Row]
    notes: list[str]
    figures: list[tuple[str, object]]  # (caption, PNG path)

    @property
    def anchor(self) -> str:
        return self.spec.key


def specs(section: Section) -> list[Spec]:
    """The section's tables: the fixed ones, and one per extra encoder whose metrics the section holds."""
    out = list(SPECS[:3])
    for enc in schema.ENCODERS:
        keys = tuple(schema.encoder_key(m, enc) for m in IN_OTHER_ENCODERS)
        if (
            enc != section.encoder
            and f"{keys[0]}_mean" in section.table
            and section.table[f"{keys[0]}_mean"].notna().any()
        ):
            out.append(Spec(f"encoder-{enc}", f"Sample metrics in the `{enc}` encoder", _ENCODER_ABOUT, keys))
    return out + list(SPECS[3:])


_ENCODER_ABOUT = (
    "The same samples scored in another encoder's features: compare within a column, never across encoders."
)


def tables(section: Section, checkpoint: str) -> list[Table]:
    """The section's tables with their columns, rows, notes and figures; tables with no values are left out."""
    out = []
    for spec in specs(section):
        table = build_table(section, spec, checkpoint)
        if table is not None:
            out.append(table)
    by_key = {t.anchor: t for t in out}
    for caption, figure in section.figures:  # beside the table it explains, else the first table
        key = next((k for suffix, k in FIGURE_TABLE.items() if str(figure).endswith(suffix)), "headline")
        target = by_key.get(key) or (out[0] if out else None)
        if target is not None:
            target.figures.append((caption, figure))
    return out


def build_table(section: Section, spec: Spec, checkpoint: str) -> Table | None:
    t = section.table
    rows = t[t["family"].isin([*spec.families, "published"])] if spec.families else t
    metrics = [m for m in spec.metrics if _shown(rows, m, spec)]
    if not metrics:
        return None
    if spec.key != "headline":  # a reference row with nothing in this table's columns is left out of it
        filled = rows[[f"{m}_mean" for m in metrics]].notna().any(axis=1)
        rows = rows[filled | ~rows["family"].isin(["real", "published"])]
    steps = checkpoint == "best" and spec.key == "headline"
    columns = [Column("rank", True, sticky=True)]
    columns += [Column("group", False, sticky=True)] if spec.group else []
    columns += [Column("model", False, sticky=True), Column("n", True)]
    columns += [Column(STEPS_HEADER, False)] if steps else []
    columns += [Column(header(section, m, spec), True, m) for m in metrics]
    out = []
    for _, row in rows.iterrows():
        rank = str(row["rank"])
        entries = [Entry(rank, rank.split("–")[0] if rank.split("–")[0].isdigit() else "")]
        if spec.group:
            entries.append(Entry(_text(row.get("group")), _text(row.get("group"))))
        entries += [Entry(row["label"], row["label"]), Entry(str(row["n"]), str(row["n"]))]
        if steps:
            entries.append(Entry(row["best_steps"], row["best_steps"]))
        for m in metrics:
            mean = row[f"{m}_mean"]
            value = "" if pd.isna(mean) else repr(float(mean))
            text = interval_text(row, m) if spec.intervals else value_text(row, m)
            best = _is_best(row, m) and bool(text)
            entries.append(Entry(text, value, best, "" if spec.intervals else interval_text(row, m, hover=True)))
        if spec.key != "headline" and not any(e.text for e in entries[-len(metrics) :]):
            continue  # nothing of this row in this table (an interval of one seed, a family's missing metric)
        out.append(Row({"real": "real", "published": "published"}.get(row["family"], "model"), entries))
    notes = section.notes if spec.key == "headline" else section.more_notes.get(spec.key, [])
    return Table(spec, spec.title, columns, out, list(notes), [])


STEPS_HEADER = "best step (selected on periodic FID)"


def _shown(rows: pd.DataFrame, m: str, spec: Spec) -> bool:
    """A metric has a column when some row has it, and, in a table of both families, every family present has it."""
    column = f"{m}_mean"
    if column not in rows or not rows[column].notna().any():
        return False
    if spec.families:
        return True
    present = [f for f in MODEL_FAMILIES if (rows["family"] == f).any()]
    return all(rows.loc[rows["family"] == f, column].notna().any() for f in present)


def header(section: Section, m: str, spec: Spec) -> str:
    """A column's header: the section's own label (an N it names), a short one, or the schema's; the headline's FID and
    KID name the encoder they are computed in."""
    label = section.labels.get(m) or SHORT.get(m) or METRICS[m].label
    if spec.key in ("headline", "intervals") and m in (schema.FID, schema.KID_MEAN) and section.encoder:
        label = f"{label} [{section.encoder}]"
    return label


def _is_best(row: pd.Series, m: str) -> bool:
    if METRICS[m].higher_is_better is None:
        return False
    flag = row.get(f"{m}_best", False)
    return bool(flag) if not pd.isna(flag) else False


def _text(value) -> str:
    """A table cell's text: "" for a missing value (NaN, None)."""
    return "" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def value_text(row: pd.Series, metric: str) -> str:
    """A table cell: mean ± std with the metric's decimals (its own count where fewer runs have it than the row's n);
    published numbers exactly as the paper gives them."""
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if row["family"] == "published":
        if pd.isna(mean):
            return ""
        return f"{mean:g}" if pd.isna(std) else f"{mean:g} ± {std:g}"
    if pd.isna(mean):
        return ""
    d = METRICS[metric].decimals
    text = f"{mean:.{d}f}" if pd.isna(std) else f"{mean:.{d}f} ± {std:.{d}f}"
    count = row.get(f"{metric}_n")
    if count is not None and not pd.isna(count) and str(int(count)) != str(row["n"]):
        text += f" (n = {int(count)})"
    return text


def interval_text(row: pd.Series, metric: str, hover: bool = False) -> str:
    """The 95% t interval of a mean as "[low, high]", each end cut at the metric's range and then marked †; "" where
    there is none (n < 2, published rows). `hover`: the longer text of the HTML page's tooltip."""
    low, high = row.get(f"{metric}_ci_low", math.nan), row.get(f"{metric}_ci_high", math.nan)
    if row["family"] == "published" or low is None or pd.isna(low):
        return ""
    d = METRICS[metric].decimals
    floor, ceiling = RANGE.get(schema.base_metric(metric), (None, None))
    a = f"{floor:.{d}f}†" if floor is not None and low < floor else f"{low:.{d}f}"
    b = f"{ceiling:.{d}f}†" if ceiling is not None and high > ceiling else f"{high:.{d}f}"
    text = f"[{a}, {b}]"
    if hover:
        count = row.get(f"{metric}_n", row["n"])
        cut = " († cut at the metric's range)" if "†" in text else ""
        return f"95% interval of the mean over {int(count)} seeds: {text}{cut}"
    return text


def tied_best(table: pd.DataFrame, metric: str) -> list[int]:
    """The rows marked best in a metric's column: every ranked model that no other model beats on it (the section's
    `<metric>_best`, by the tests of the ranks); none for descriptive metrics or rows without a value."""
    if METRICS[metric].higher_is_better is None or f"{metric}_best" not in table:
        return []
    marked = table[f"{metric}_best"].fillna(False).astype(bool) & table[f"{metric}_mean"].notna()
    return [int(i) for i in table.index[marked]]

"""The leaderboard's table logic on a synthetic store (bench.report.tables.build reads a DataFrame of runs)."""

from __future__ import annotations

import pandas as pd
import pytest

from bench import tracking
from bench.report import across, layout, render, stats
from bench.report import files as report_files
from bench.report import tables as report
from bench.schema import PROTOCOL_VERSION
from tests.conftest import child_runs, search


def _run(model, variant, seed, fid, **params):
    row = {
        "status": "FINISHED",
        "start_time": seed,
        "bench.cell": f"{variant}-{seed}",
        "bench.dataset": "digits",
        "bench.protocol": "p1",
        "bench.model": model,
        "bench.variant": variant,
        "bench.family": "gan" if model != "vae-mlp" else "vae",
        "bench.seed": str(seed),
        "metrics.fid": fid,
        "params.cell.seed": str(seed),  # differs between runs, never between variants: not a label
        "bench.protocol_version": str(PROTOCOL_VERSION),
    }
    row.update({f"params.{k}": v for k, v in params.items()})
    return row


def test_variants_of_one_model_are_labelled_by_the_params_that_differ():
    fp32 = {"train.precision": "fp32", "train.steps": "1500", "model.lr": "2e-4"}
    runs = pd.DataFrame(
        [
            _run("gan-mlp", "aaaaaaaa11", 0, 3.0, **fp32),
            _run("gan-mlp", "aaaaaaaa11", 1, 3.4, **fp32),
            _run("gan-mlp", "bbbbbbbb22", 0, 4.6, **{**fp32, "train.precision": "bf16"}),
            _run("vae-mlp", "cccccccc33", 0, 31.0, **{**fp32, "model.lr": "1e-3"}),
        ]
    )
    (section,) = report.build(runs)
    labels = dict(zip(section.table["variant"], section.table["label"], strict=True))
    assert labels == {
        "aaaaaaaa11": "gan-mlp (train.precision=fp32)",
        "bbbbbbbb22": "gan-mlp (train.precision=bf16)",
        "cccccccc33": "vae-mlp",  # one variant: no label
    }
    assert any("labelled by the params in which their variants differ" in n for n in section.notes)
    md = render.to_markdown("quick", [section])
    # n = 1 on two of the rows: they cannot be tested, so they are shown unranked; n = 2 gives a (wide) t interval
    assert "| 1 | a | gan-mlp (train.precision=fp32) | 2 | **3.20 ± 0.28** |" in md
    assert "| 1 | gan-mlp (train.precision=fp32) | 2 | **[0.66, 5.74]** |" in md  # the intervals table
    assert "| — |  | vae-mlp | 1 | 31.00 |" in md
    # an untested row with a better mean than every tested one: no row can be called best
    runs.loc[3, "metrics.fid"] = 1.0
    (section,) = report.build(runs)
    assert not section.table["fid_best"].any() and "| **" not in render.to_markdown("quick", [section])


def test_runs_of_an_earlier_protocol_version_are_counted_not_shown():
    """A table holds the current protocol version only: older runs are left out, and the report says how many."""
    current = _run("gan-mlp", "aaaaaaaa11", 0, 3.0)
    older = {**_run("dcgan", "dddddddd44", 0, 9.0), "bench.protocol_version": str(PROTOCOL_VERSION - 1)}
    unversioned = {k: v for k, v in _run("sngan", "eeeeeeee55", 0, 8.0).items() if k != "bench.protocol_version"}
    runs = pd.DataFrame([current, older, unversioned])
    (section,) = report.build(runs)
    assert list(section.table["model"]) == ["gan-mlp"]
    assert report.earlier_protocol(runs) == 2
    md = render.to_markdown("quick", [section], earlier=2)
    assert "2 run(s) of an earlier protocol version are not shown; `bench run --suite quick` re-runs" in md


def test_a_real_data_row_below_the_models_n_is_never_called_a_floor():
    """Issue 16 item 1: a held-out split smaller than the models' N (digits: 360 test images, 2,000 samples). The
    row keeps only the columns that do not depend on N, and the models' FID at the row's N sits beside it."""
    counts = {"metrics.eval/generated_images": 2000, "metrics.eval/reference_images": 1437}
    runs = [
        {**_run("gan-mlp", "g", s, f), **counts, "metrics.fid_matched": f + 4, "metrics.precision": 0.7}
        for s, f in ((0, 3.0), (1, 3.2))
    ]
    real = {**_run("real-data", "r", 0, 0.9), "bench.family": "real", "bench.seed": "-", "metrics.precision": 0.8}
    real.update({"metrics.eval/generated_images": 360, "metrics.fid_matched": 0.9, "metrics.kid_mean": 0.001})
    (section,) = report.build(pd.DataFrame([*runs, real]))
    md = render.to_markdown("quick", [section])
    row = section.table[section.table["family"] == "real"].iloc[0]
    assert row["label"] == "real data (held-out split, N = 360)" and "floor" not in row["label"]
    assert pd.isna(row["fid_mean"]) and pd.isna(row["precision_mean"])  # N-dependent: not shown
    assert row["fid_matched_mean"] == 0.9 and row["kid_mean_mean"] == 0.001
    assert "FID at N = 360 ↓" in md and "not a floor for FID" in md
    # at the same N the row is the floor, in every column
    same = {**real, "metrics.eval/generated_images": 2000}
    (section,) = report.build(pd.DataFrame([*runs, same]))
    row = section.table[section.table["family"] == "real"].iloc[0]
    assert row["label"] == "real data (held-out split, same N: the floor)" and row["fid_mean"] == 0.9


def test_variant_label_caps_the_params_and_falls_back_to_the_hash():
    many = {f"model.k{i}": str(i) for i in range(5)}
    runs = pd.DataFrame(
        [_run("dcgan", "v1xxxxxxxx", 0, 1.0, **many), _run("dcgan", "v2yyyyyyyy", 0, 2.0, **dict.fromkeys(many, "x"))]
    )
    assert report.variant_label(runs, "dcgan", "v2yyyyyyyy") == "model.k0=x, model.k1=x, model.k2=x, +2 more"
    same = pd.DataFrame([_run("dcgan", "v1xxxxxxxx", 0, 1.0), _run("dcgan", "v2yyyyyyyy", 0, 2.0)])
    assert report.variant_label(same, "dcgan", "v2yyyyyyyy") == "v2yyyyyy"


def test_report_from_the_store(quick_run, tmp_path):
    paths = report_files.write_report(quick_run["uri"], "quick", tmp_path)
    md = paths["markdown"].read_text()
    assert "## digits — protocol" in md
    for model in ("gan-mlp", "vae-mlp"):
        assert f"| {model} | 2 |" in md
    assert "±" in md and "NLL (IWAE)" in md
    # one N per table: the tiny suite's 200 samples, the real-data row at the same N, both stated
    assert "| — |  | real data (held-out split, same N: the floor) | 1 |" in md and "It is not ranked" in md
    assert "N = 200 generated images vs the 1,137 images of the `train` split" in md
    assert "bits/dim (binary pixels)" in md
    assert "VAE samples are the decoder's mean images" in md  # what a VAE's sample metrics score
    csv = pd.read_csv(paths["csv"])
    assert set(csv["model"]) == {"gan-mlp", "vae-mlp", "real-data"}
    models = csv[csv["model"] != "real-data"]
    assert (models["n"] == 2).all()
    # ranks: apart when Welch's test over the two seeds separates the FIDs (one pair: Holm changes nothing), a
    # shared range and group when it cannot; bold FID on every model tied for best
    fids = child_runs(quick_run["uri"]).groupby("tags.bench.model")["metrics.fid"].apply(list)
    apart = stats.welch_p(fids["gan-mlp"], fids["vae-mlp"]) < 0.05
    assert sorted(models["rank"].astype(str)) == (["1", "2"] if apart else ["1–2", "1–2"])
    assert sorted(models["group"]) == (["a", "b"] if apart else ["a", "a"])
    assert models["fid_best"].sum() == (1 if apart else 2) and (models["fid_n"] == 2).all()
    assert "Holm-adjusted" in md and '"not separated at these n seeds", not "equal"' in md
    low, high = stats.t_interval(fids["gan-mlp"])
    row = csv[csv["model"] == "gan-mlp"].iloc[0]
    assert (row["fid_ci_low"], row["fid_ci_high"]) == pytest.approx((low, high))
    assert f"[{low:.2f}, {high:.2f}]" in md and "95% Student-t intervals" in md and "Welch" in md
    runs = child_runs(quick_run["uri"])
    gan = runs[runs["tags.bench.model"] == "gan-mlp"]["metrics.fid"]
    row = csv[csv["model"] == "gan-mlp"].iloc[0]
    assert row["fid_mean"] == pytest.approx(gan.mean()) and row["fid_std"] == pytest.approx(gan.std(ddof=1))
    assert pd.isna(row["elbo_mean"])
    assert "code length (AIS), nats" in md and "BDMC gap" in md
    assert "AIS on 8 test images, 2 chains, 10 sigmoid" in md and "NLL (AIS)" not in md
    assert "VAE check: AIS − IWAE, nats" in md and "FID∞ fit SE" in md and "can fall below 0" in md
    assert row["nll_ais_mean"] == pytest.approx(runs[runs["tags.bench.model"] == "gan-mlp"]["metrics.nll_ais"].mean())
    # figures: FID curves, the sample panel, the VAE likelihood chart, the AIS chart; linked from the markdown
    figures = sorted(p.name.split("-")[-1] for name, p in paths.items() if name.startswith("figure:"))
    assert figures == ["ais.png", "fid.png", "improvement.png", "likelihood.png", "nearest.png", "samples.png"]
    for name, p in paths.items():
        if name.startswith("figure:"):
            assert p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG" and f"(figures/{p.name})" in md
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 6 and "http://" not in page and "https://" not in page
    headline = page.split('data-table="headline"')[1].split("</table>")[0]
    assert headline.count('<tr class="model">') == 2 and headline.count('<tr class="real">') == 1
    _headline_and_further_tables(md)


def _markdown_tables(md: str) -> dict[str, list[list[str]]]:
    """Each `### title` table of a markdown report: its header and rows as lists of cells."""
    tables = {}
    for block in md.split("\n### ")[1:]:
        title, _, body = block.partition("\n")
        lines = [line for line in body.splitlines() if line.startswith("|")]
        tables[title] = [[c.strip() for c in line.strip("|").split("|")] for line in lines if "---" not in line]
    return tables


def _headline_and_further_tables(md: str) -> None:
    """The headline table holds rank, group, model, n and the few columns a reader came for, the encoder named; no
    mixed table has a column one family leaves empty; every markdown row is under 200 characters."""
    tables = _markdown_tables(md)
    assert list(tables) == [
        "Headline",
        "95% intervals of the headline numbers",
        "Sample diagnostics",
        "Likelihood of both families: 8-bit code length by AIS",
        "VAE likelihood under each VAE's own decoder",
        "VAE reconstructions of test images",
    ]
    assert tables["Headline"][0] == [
        "rank", "group", "model", "n", "FID ↓ [domain]", "KID ↓ [domain]", "precision ↑", "recall ↑",
        "bits/pixel (AIS) ↓",
    ]  # fmt: skip
    for title, (header, *rows) in tables.items():
        families = {row[header.index("model")] for row in rows} & {"gan-mlp", "vae-mlp"}
        if families == {"gan-mlp", "vae-mlp"}:  # a mixed table: every metric column filled for both families
            for c in range(header.index("n") + 1, len(header)):
                filled = {row[header.index("model")] for row in rows if row[c]}
                assert {"gan-mlp", "vae-mlp"} <= filled, (title, header[c])
        else:
            assert title.startswith("VAE") and families == {"vae-mlp"}, title
    assert max(len(line) for line in md.splitlines() if line.startswith("|")) < 200


def test_the_tidy_csv_is_every_metric_of_every_run_in_the_store(quick_run, tmp_path):
    """leaderboard-tidy.csv, read with pandas in one line, holds every metric of every run behind the tables, as
    the MLflow store has it (read back through MlflowClient, not through bench)."""
    from mlflow import MlflowClient

    paths = report_files.write_report(quick_run["uri"], "quick", tmp_path, figures=False)
    tidy = pd.read_csv(paths["tidy"], dtype={"seed": str, "encoder": str}, keep_default_na=False)
    assert list(tidy.columns) == [
        "suite", "dataset", "protocol", "protocol_version", "model", "variant", "family", "seed", "run_id",
        "checkpoint", "metric", "encoder", "value",
    ]  # fmt: skip
    client = MlflowClient(quick_run["uri"])
    finished = search(quick_run["uri"])  # the cell runs, the real-data row's among them
    finished = finished[finished["tags.bench.cell"].notna() & (finished["status"] == "FINISHED")]
    assert set(tidy["run_id"]) == set(finished["run_id"])
    for run_id, rows in tidy.groupby("run_id"):
        stored = client.get_run(run_id).data.metrics
        back = {
            ("best/" if c == "best" else "") + m: v
            for c, m, v in zip(rows.checkpoint, rows.metric, rows.value, strict=True)
        }
        assert back.keys() == stored.keys() and all(back[k] == pytest.approx(stored[k], rel=1e-12) for k in back)
    fid = tidy[(tidy["metric"] == "fid") & (tidy["family"] != "real")]
    assert set(fid["encoder"]) == {"domain"} and set(fid["checkpoint"]) == {"final", "best"}
    assert set(tidy.loc[tidy["metric"] == "elbo", "encoder"]) == {""}


def test_published_rows_only_where_dataset_metric_and_encoder_match(quick_run):
    from bench.config import Published

    def ref(**kw):
        base = dict(dataset="digits", model="paper GAN", metric="fid", value=0.5, protocol="p", citation="c")
        return Published(**{**base, **kw})

    shown = [ref(encoder="domain", std=0.1), ref(model="paper VAE", metric="nll_iwae", value=1.0)]
    hidden = [ref(encoder="inception"), ref(dataset="mnist")]
    (section,) = report.build(tracking.load_runs(quick_run["uri"], "quick"), published=tuple(shown + hidden))
    table = section.table
    published = table[table["family"] == "published"]
    assert list(published["model"]) == ["paper GAN", "paper VAE"]
    assert (published["rank"] == "—").all()
    ranks = table[table["family"] == "gan"]["rank"].tolist() + table[table["family"] == "vae"]["rank"].tolist()
    assert sorted(ranks) in (["1", "2"], ["1–2", "1–2"])  # ours are ranked among themselves only
    # better than every model, yet never "best in column"
    assert layout.tied_best(table, "fid") and not set(layout.tied_best(table, "fid")) & set(published.index)
    assert layout.tied_best(table, "nll_iwae") and not set(layout.tied_best(table, "nll_iwae")) & set(published.index)
    md = render.to_markdown("quick", [section])
    assert "| — |  | *published: paper GAN [1]* |  | 0.5 ± 0.1 |" in md and "[2] paper VAE: c — p" in md


def test_published_config_errors(tmp_path):
    from tests.conftest import BENCH_TOML

    base = BENCH_TOML.read_text()
    cases = {
        'metric = "fidd"': "metric must be one of",
        'dataset = "svhn"': "unknown dataset 'svhn'",
        'value = "six"': "value must be a number",
    }
    good = (
        '[[published]]\ndataset = "mnist"\nmodel = "m"\nmetric = "fid"\nvalue = 6.8\nprotocol = "p"\ncitation = "c"\n'
    )
    from bench import config

    (tmp_path / "good.toml").write_text(base + good)
    assert config.load(tmp_path / "good.toml").published[-1].value == 6.8
    for change, message in cases.items():
        key = change.split(" = ")[0]
        lines = [change if line.startswith(f"{key} =") else line for line in good.splitlines()]
        path = tmp_path / "bench.toml"
        path.write_text(base + "\n".join(lines) + "\n")
        with pytest.raises(config.ConfigError, match=message):
            config.load(path)


def test_one_table_across_datasets_ranks_models_over_the_suites_tables():
    """A two-dataset suite: A wins on digits, B on fashion-mnist, C is last on both; D ran on digits only. Mean ranks
    by hand, a stratified bootstrap interval that is a point where the seeds cannot reorder anything, P(improvement)
    averaged over the datasets, D named as not aggregated."""
    fids = {
        "digits": {"gan-a": [1.0, 1.1, 0.9], "gan-b": [2.0, 2.2, 1.8], "gan-c": [3.0, 3.1, 2.9], "gan-d": [0.1, 0.2]},
        "fashion-mnist": {"gan-a": [5.0, 5.1, 4.9], "gan-b": [4.0, 4.4, 3.6], "gan-c": [9.0, 9.3, 8.7]},
    }
    runs = pd.DataFrame(
        [
            {
                **_run(model, f"{model}-{dataset}", seed, fid),
                "bench.dataset": dataset,
                "bench.cell": f"{dataset}-{model}-{seed}",
            }
            for dataset, models in fids.items()
            for model, values in models.items()
            for seed, fid in enumerate(values)
        ]
    )
    sections = report.build(runs)
    assert [s.dataset for s in sections] == ["digits", "fashion-mnist"]
    table = across.table(sections)
    rows = {row.entries[0].text: [e.text for e in row.entries] for row in table.rows}
    assert list(rows) == ["gan-a", "gan-b", "gan-c"]  # mean ranks 1.5, 1.5, 3 (stable order on ties)
    assert rows["gan-a"][2] == "1.50" and rows["gan-b"][2] == "1.50" and rows["gan-c"][2] == "3.00"
    assert rows["gan-c"][3] == "[3.00, 3.00]" and rows["gan-a"][4] == "digits 1, fashion-mnist 2"
    # A vs B: seeds overlap on neither dataset, so each bootstrap draw keeps the order: the interval is the point
    assert rows["gan-a"][3] == "[1.50, 1.50]"
    labels, seeds = across.common(sections)
    matrix = across.improvement(seeds)
    assert matrix[0, 1] == pytest.approx(0.5) and matrix[0, 2] == pytest.approx(1.0)  # (1 + 0) / 2, (1 + 1) / 2
    assert rows["gan-a"][5] == f"{(0.5 + 1.0) / 2:.2f}"
    assert any("Not in every table, so not aggregated: gan-d" in n for n in table.notes)
    # overlapping seeds: the interval widens and holds the point estimate
    fids["digits"]["gan-b"] = [1.05, 0.7, 1.4]
    runs.loc[(runs["bench.model"] == "gan-b") & (runs["bench.dataset"] == "digits"), "metrics.fid"] = [1.05, 0.7, 1.4]
    labels, seeds = across.common(report.build(runs))
    low, high = across.rank_interval(seeds)
    ranks = across.mean_ranks(seeds)
    assert low[0] < high[0] and low[0] <= ranks[0] <= high[0] and (low[2], high[2]) == (3.0, 3.0)
    md = render.to_markdown("two", report.build(runs))
    assert "## Across datasets" in md.split("## digits")[0] and "| gan-c | 2 | 3.00 | [3.00, 3.00] |" in md
    assert across.table(report.build(runs[runs["bench.dataset"] == "digits"])) is None  # one dataset: no table


def test_intervals_are_cut_at_the_metrics_range_and_marked():
    """Two seeds at FID 1 and 9: the t interval (1 degree of freedom) reaches far below 0, which no FID can be; the
    table cuts it at 0 and marks the cut end †. Precision cannot exceed 1. The hover text says the same."""
    runs = pd.DataFrame(
        [{**_run("gan-mlp", "g", s, f), "metrics.precision": p} for s, f, p in ((0, 1.0, 0.99), (1, 9.0, 0.6))]
    )
    (section,) = report.build(runs)
    row = section.table.iloc[0]
    low, high = stats.t_interval([1.0, 9.0])
    assert low < 0 and layout.interval_text(row, "fid") == f"[0.00†, {high:.2f}]"
    p_low, p_high = stats.t_interval([0.99, 0.6])
    assert p_low < 0 and p_high > 1 and layout.interval_text(row, "precision") == "[0.000†, 1.000†]"
    assert "cut at the metric's range" in layout.interval_text(row, "fid", hover=True)
    md = render.to_markdown("quick", [section])
    assert f"| 1 | gan-mlp | 2 | **[0.00†, {high:.2f}]** | **[0.000†, 1.000†]** |" in md  # alone: tied best


def test_a_library_call_leaves_the_users_logging_and_environment_as_they_were(quick_run, tmp_path):
    """From a user's Python (a fresh interpreter): writing a report, which opens the store and downloads artifacts,
    changes no logger level and no environment variable; the `bench` command quiets MLflow in its own process."""
    import subprocess
    import sys

    code = f"""
import logging, os
import mlflow
names = ("mlflow", "alembic", "mlflow.store.db.utils")
before = ({{n: logging.getLogger(n).level for n in names}}, dict(os.environ))
from bench.report import files
paths = files.write_report({quick_run["uri"]!r}, "quick", {str(tmp_path / "r")!r})
assert any(k.startswith("figure:") for k in paths)  # artifacts were downloaded
after = ({{n: logging.getLogger(n).level for n in names}}, dict(os.environ))
assert before == after, (before[0], after[0], set(after[1].items()) ^ set(before[1].items()))
print("unchanged")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "unchanged", out.stderr[-3000:]

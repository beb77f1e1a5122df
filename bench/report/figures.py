"""Report figures (matplotlib, PNG): FID over training steps and wall-clock, sample grids, VAE likelihoods, AIS
log-likelihoods of GANs and VAEs.

Pure plotting on data the report has already read from MLflow (bench.tracking); never imports torch.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.schema import AIS_BDMC_GAP, AIS_SIGMA, PERIODIC_FID, PERIODIC_TRAIN_S  # noqa: E402

GRID_PADDING = 2  # bench.run.record.grid: make_grid(padding=2), 8 images per row
GRID_COLUMNS = 8
DPI = 110


def fid_curves(histories: pd.DataFrame, models: dict[str, str], title: str, path: Path) -> Path | None:
    """Periodic FID against training step (left) and training wall-clock (right): a line per model (mean over
    seeds) and a band from the lowest to the highest seed. `histories` has run_id, key, step, value for the keys
    periodic/fid and periodic/train_s; `models` maps run_id → model label. None when nothing was logged."""
    if histories.empty or not (histories["key"] == PERIODIC_FID).any():
        return None
    wide = histories.pivot_table(index=["run_id", "step"], columns="key", values="value").reset_index()
    wide["model"] = wide["run_id"].map(models)
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for i, (model, group) in enumerate(sorted(wide.groupby("model"), key=lambda kv: kv[0])):
        colour = f"C{i % 10}"
        by_seed = group.groupby("step")
        stats = by_seed[PERIODIC_FID].agg(["mean", "min", "max"])
        label = f"{model} (n={group['run_id'].nunique()})"
        by_step.plot(stats.index, stats["mean"], color=colour, marker="o", markersize=3, label=label)
        by_step.fill_between(stats.index, stats["min"], stats["max"], color=colour, alpha=0.2, linewidth=0)
        if PERIODIC_TRAIN_S in group:
            minutes = by_seed[PERIODIC_TRAIN_S].mean() / 60.0
            by_time.plot(minutes, stats["mean"], color=colour, marker="o", markersize=3, label=label)
            by_time.fill_between(minutes, stats["min"], stats["max"], color=colour, alpha=0.2, linewidth=0)
    by_step.set_yscale("log")
    by_step.set_xlabel("training step")
    by_step.set_ylabel("periodic FID (log scale)")
    by_time.set_xlabel("training wall-clock (minutes, mean over seeds)")
    for ax in (by_step, by_time):
        ax.grid(True, which="both", alpha=0.3)
    by_step.legend(fontsize=8)
    fig.suptitle(f"{title}: FID during training (line: mean over seeds; band: min to max)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _first_row(grid: np.ndarray) -> np.ndarray:
    """The first row of 8 images (with their padding) of a sample grid written by the runner."""
    width = grid.shape[1]
    size = (width - GRID_PADDING) // GRID_COLUMNS - GRID_PADDING  # square images
    return grid[: size + 2 * GRID_PADDING]


def sample_panel(grids: list[tuple[str, Path]], title: str, path: Path) -> Path | None:
    """One row of 8 samples per model (the first row of its final sample grid), labelled on the left."""
    rows = [(label, _first_row(plt.imread(str(p)))) for label, p in grids if p is not None and Path(p).is_file()]
    if not rows:
        return None
    height = rows[0][1].shape[0] / rows[0][1].shape[1] * 8
    fig, axes = plt.subplots(len(rows), 1, figsize=(8.5, max(1.2, height * len(rows) + 0.6)), squeeze=False)
    for ax, (label, strip) in zip(axes[:, 0], rows, strict=True):
        ax.imshow(strip, cmap="gray" if strip.ndim == 2 else None, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(textwrap.fill(label, 18, break_on_hyphens=False), rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(f"{title}: samples of the final checkpoint, one seed per model", fontsize=10)
    fig.tight_layout()
    fig.subplots_adjust(left=0.2)  # the row labels sit left of the axes, outside what tight_layout reserves
    return _save(fig, path)


def nearest_panel(panels: list[tuple[str, Path]], title: str, path: Path) -> Path | None:
    """The memorisation figure: per model, its logged grid of 8 rows (a sample, then its 3 nearest training
    images in the first encoder's features), side by side, labelled above."""
    images = [(label, plt.imread(str(p))) for label, p in panels if p is not None and Path(p).is_file()]
    if not images:
        return None
    fig, axes = plt.subplots(1, len(images), figsize=(2.3 * len(images) + 0.4, 6.2), squeeze=False)
    for ax, (label, image) in zip(axes[0], images, strict=True):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(label, fontsize=8)
        width = image.shape[1] / 4
        ax.axvline(width - 0.5, color="C3", linewidth=1.5)  # the sample | its nearest training images
    fig.suptitle(f"{title}: each sample (left of the red line)\nbeside its 3 nearest training images", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def likelihood_chart(table: pd.DataFrame, title: str, path: Path) -> Path | None:
    """VAEs: −ELBO split into distortion and rate (stacked bars) and the IWAE NLL (marker), nats per image, with the
    spread over seeds. `table` is a leaderboard section table (one row per model, <metric>_mean/_std columns)."""
    vae = table[(table["family"] == "vae") & table["elbo_mean"].notna()]
    if vae.empty:
        return None
    y = np.arange(len(vae))
    fig, ax = plt.subplots(figsize=(8, 1.9 + 0.5 * len(vae)))
    distortion, rate = vae["distortion_mean"].to_numpy(), vae["rate_mean"].to_numpy()
    ax.barh(y, distortion, color="C0", alpha=0.75, label="distortion (−log p(x|z))")
    ax.barh(y, rate, left=distortion, color="C1", alpha=0.75, label="rate (KL)", xerr=vae["elbo_std"].fillna(0))
    ax.errorbar(
        vae["nll_iwae_mean"],
        y,
        xerr=vae["nll_iwae_std"].fillna(0),
        fmt="D",
        color="black",
        label="NLL (IWAE bound)",
    )
    ax.set_yticks(y, vae["label"])
    ax.invert_yaxis()
    ax.set_xlabel("nats per image (lower is better); the bar's end is −ELBO")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, frameon=False)
    ax.set_title(f"{title}: VAE test likelihood (mean over seeds)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def ais_chart(table: pd.DataFrame, title: str, path: Path) -> Path | None:
    """GANs and VAEs on one likelihood scale: the AIS code length per model (marker, with the spread over seeds), and
    the BDMC gap drawn to its left (how much lower the true NLL can be, measured on data simulated from the model)."""
    rows = table[table["family"].isin(["gan", "vae"]) & table["nll_ais_mean"].notna()]
    if rows.empty:
        return None
    rows = rows.sort_values("nll_ais_mean")
    y = np.arange(len(rows))
    nll, gap = rows["nll_ais_mean"].to_numpy(), rows[f"{AIS_BDMC_GAP}_mean"].fillna(0).to_numpy()
    colours = ["C3" if f == "gan" else "C0" for f in rows["family"]]
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.5 * len(rows)))
    ax.barh(y, gap, left=nll - gap, color=colours, alpha=0.25, label="BDMC gap (simulated data)")
    ax.errorbar(nll, y, xerr=rows["nll_ais_std"].fillna(0), fmt="none", ecolor="black", capsize=3)
    for family, colour in (("gan", "C3"), ("vae", "C0")):
        pick = (rows["family"] == family).to_numpy()
        if pick.any():
            ax.plot(nll[pick], y[pick], "D", color=colour, label=f"code length (AIS), {family.upper()}s")
    sigmas = rows[f"{AIS_SIGMA}_mean"].to_numpy()
    ax.set_yticks(y, [f"{label} (σ={s:g})" for label, s in zip(rows["label"], sigmas, strict=True)])
    ax.invert_yaxis()
    ax.set_xlabel("−log P(x), nats per 8-bit image under a discretised Gaussian decoder (lower is better)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.use_sticky_edges = False  # bars pin the axis to their left edge otherwise
    ax.margins(x=0.08)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{title}: code length by AIS, GANs and VAEs on one scale (mean over seeds)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def improvement_matrix(
    labels: list[str], matrix: np.ndarray, title: str, path: Path, low: np.ndarray | None = None, high=None
) -> Path | None:
    """Probability of improvement on FID between every pair of models (Agarwal et al. 2021): cell (i, j) is
    P(a seed of model i has a lower FID than a seed of model j), ties counting half, with its bootstrap interval
    [low, high] beneath where given. None with fewer than 2 models."""
    if len(labels) < 2:
        return None
    size = 1.4 + 0.95 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 2.5, size))
    image = ax.imshow(matrix, cmap="RdBu", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(labels)), [textwrap.shorten(s, 34) for s in labels], rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), [textwrap.shorten(s, 34) for s in labels], fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i != j and not np.isnan(matrix[i, j]):
                colour = "white" if abs(matrix[i, j] - 0.5) > 0.3 else "black"
                text = f"{matrix[i, j]:.2f}"
                if low is not None and not np.isnan(low[i, j]):
                    text += f"\n[{low[i, j]:.2f}, {high[i, j]:.2f}]"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("model Y")
    ax.set_ylabel("model X")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="P(FID of X < FID of Y)")
    ax.set_title(f"{title}: P(improvement) on FID\n(pairs of seeds, ties half; [95% bootstrap])", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def budget_curves(sweeps: list, title: str, path: Path) -> Path:
    """Lucic et al. 2018's figure: per model, the expected best validation FID against the budget k = 1…B (trials
    drawn from its sweep), with the 95% bootstrap band over the trials. `sweeps`: bench.report.sweep.ModelSweep."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, s in enumerate(sweeps):
        k = np.arange(1, s.budget + 1)
        colour = f"C{i % 10}"
        label = f"{s.model} (B = {s.budget}" + (f", {s.failed} failed)" if s.failed else ")")
        ax.plot(k, s.curve, color=colour, marker="o", markersize=3, label=label)
        ax.fill_between(k, s.low, s.high, color=colour, alpha=0.15, linewidth=0)
    ax.set_xlabel("tuning budget k (trials)")
    ax.set_ylabel("expected best validation FID ↓")
    ax.set_title(f"{title}: best score found against the budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)

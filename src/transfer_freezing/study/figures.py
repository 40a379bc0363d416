"""The comparison figure: test accuracy per freeze mode, mean ± std band with per-seed points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import atomic_path
from ..errors import UserError
from .stats import validate_runs

JITTER_SEED = 0
JITTER_HALF_WIDTH = 0.08
SOURCE_OFFSET = 0.12  # x shift between lr sources when several share a panel
POINT_COLOUR = "0.15"


def plot_comparison(runs: pd.DataFrame, summary: pd.DataFrame, path: str | Path) -> None:
    """One panel per model: mean line, ±sd band and jittered per-seed points, saved atomically.

    ``summary`` is ``stats.summarize(runs)``; its row order gives the order of modes on the x axis.
    Each lr source (``fixed`` / ``sweep``) gets its own colour; a legend names them.
    """
    runs = validate_runs(runs)
    if summary.empty:
        raise UserError("comparison summary is empty: nothing to plot")
    models = list(pd.unique(summary["model"]))
    sources = list(pd.unique(summary["lr_source"]))
    widths = [
        max(4.5, 1.3 * summary.loc[summary["model"] == m, "freeze_mode"].nunique()) for m in models
    ]
    fig = Figure(figsize=(sum(widths), 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(models), sharey=True, squeeze=False, width_ratios=widths)[0]
    for ax, model in zip(axes, models, strict=True):
        _draw_panel(ax, runs[runs["model"] == model], summary[summary["model"] == model], sources)
    axes[0].set_ylabel("Test accuracy (%)")
    axes[0].legend(loc="best", frameon=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format=Path(path).suffix.lstrip(".") or "png")


def _draw_panel(ax: Axes, runs: pd.DataFrame, summary: pd.DataFrame, sources: list[str]) -> None:
    modes = list(pd.unique(summary["freeze_mode"]))
    rng = np.random.default_rng(JITTER_SEED)
    offsets = (np.arange(len(sources)) - (len(sources) - 1) / 2) * SOURCE_OFFSET
    for i, source in enumerate(sources):
        colour = f"C{i}"
        rows = summary[summary["lr_source"] == source].set_index("freeze_mode").reindex(modes)
        x = np.arange(len(modes)) + offsets[i]
        mean, std = rows["test_mean"].to_numpy(float), rows["test_std"].to_numpy(float)
        label = "Mean ± SD" if len(sources) == 1 else f"{source} lr: mean ± SD"
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        ax.plot(
            x, mean, color=colour, marker="o", markersize=8, linewidth=2.5, label=label, zorder=3
        )
        point_colour = POINT_COLOUR if len(sources) == 1 else colour
        _draw_points(ax, runs[runs["lr_source"] == source], modes, x, point_colour, rng)
    ax.set_xticks(np.arange(len(modes)), modes, rotation=30, ha="right")
    ax.set_xlabel("Freeze mode")
    ax.set_title(f"{summary['model'].iloc[0]} ({_seed_label(summary)})", fontweight="bold")
    ax.grid(axis="y", alpha=0.3)


def _draw_points(
    ax: Axes,
    runs: pd.DataFrame,
    modes: list[str],
    x: np.ndarray,
    colour: str,
    rng: np.random.Generator,
) -> None:
    """Per-seed points, sorted by seed so the jitter does not depend on the order of ``runs``."""
    for pos, mode in zip(x, modes, strict=True):
        acc = runs[runs["freeze_mode"] == mode].sort_values("seed")["test_acc"].dropna()
        jitter = rng.uniform(-JITTER_HALF_WIDTH, JITTER_HALF_WIDTH, size=len(acc))
        ax.scatter(pos + jitter, acc, s=22, color=colour, alpha=0.6, edgecolors="none", zorder=2)


def _seed_label(summary: pd.DataFrame) -> str:
    low, high = int(summary["n"].min()), int(summary["n"].max())
    return f"N={high} seeds" if low == high else f"N={low}–{high} seeds"

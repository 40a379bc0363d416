"""Study figures: the comparison (test accuracy per freeze mode, mean ± std band with per-seed points),
the forest plot of differences to the reference mode, accuracy against trainable share (every
architecture on one axis), and the per-block diagnostics (weight change and CKA per mode)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter
from scipy import stats as sps

from ..atomic import atomic_path
from ..errors import UserError, require_table
from ..model import freezing
from .stats import run_keys, validate_runs

JITTER_SEED = 0
JITTER_HALF_WIDTH = 0.08
SOURCE_OFFSET = 0.12  # x shift between lr sources when several share a panel
POINT_COLOUR = "0.15"


def plot_comparison(runs: pd.DataFrame, summary: pd.DataFrame, path: str | Path) -> None:
    """One panel per model: mean line, ±sd band and jittered per-run points, saved atomically.

    ``summary`` is ``stats.summarize(runs)``; its row order gives the order of modes on the x axis.
    Each recipe (e.g. ``fixed`` / ``tuned``) gets its own colour; a legend names them.
    """
    runs = validate_runs(runs)
    if summary.empty:
        raise UserError("comparison summary is empty: nothing to plot")
    if "condition" in summary.columns:  # one panel per model and condition
        summary, runs = _with_condition(summary), _with_condition(runs)
    models = list(pd.unique(summary["model"]))
    sources = list(pd.unique(summary["recipe"]))
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


def _with_condition(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(model=table["model"] + " (" + table["condition"] + ")")


def _draw_panel(ax: Axes, runs: pd.DataFrame, summary: pd.DataFrame, sources: list[str]) -> None:
    modes = list(pd.unique(summary["freeze_mode"]))
    rng = np.random.default_rng(JITTER_SEED)
    offsets = (np.arange(len(sources)) - (len(sources) - 1) / 2) * SOURCE_OFFSET
    for i, source in enumerate(sources):
        colour = f"C{i}"
        rows = summary[summary["recipe"] == source].set_index("freeze_mode").reindex(modes)
        x = np.arange(len(modes)) + offsets[i]
        mean, std = rows["test_mean"].to_numpy(float), rows["test_std"].to_numpy(float)
        label = "Mean ± SD" if len(sources) == 1 else f"{source}: mean ± SD"
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
        ax.plot(
            x, mean, color=colour, marker="o", markersize=8, linewidth=2.5, label=label, zorder=3
        )
        point_colour = POINT_COLOUR if len(sources) == 1 else colour
        _draw_points(ax, runs[runs["recipe"] == source], modes, x, point_colour, rng)
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
    """Per-run points, sorted by (seed, repeat, fold) so the jitter does not depend on the order of
    ``runs``."""
    order = run_keys(runs)
    for pos, mode in zip(x, modes, strict=True):
        acc = runs[runs["freeze_mode"] == mode].sort_values(order)["test_acc"].dropna()
        jitter = rng.uniform(-JITTER_HALF_WIDTH, JITTER_HALF_WIDTH, size=len(acc))
        ax.scatter(pos + jitter, acc, s=22, color=colour, alpha=0.6, edgecolors="none", zorder=2)


def _seed_label(summary: pd.DataFrame) -> str:
    """How many runs (seeds × repeats × folds) each mode has."""
    low, high = int(summary["n"].min()), int(summary["n"].max())
    return f"N={high} runs" if low == high else f"N={low}–{high} runs"


# --- forest plot: paired differences against the reference mode with the equivalence band ---------

FOREST_COLUMNS = ("model", "freeze_mode", "estimate", "low", "high", "verdict")
VERDICT_STYLE = {  # colour and marker, so the verdict reads without colour too
    "better": ("tab:green", "^"),
    "worse": ("tab:red", "v"),
    "equivalent": ("tab:blue", "o"),
    "inconclusive": ("0.45", "s"),
}
BAND_COLOUR = "tab:blue"


def plot_forest(effects: pd.DataFrame, margin: float, path: str | Path, title: str = "") -> None:
    """Forest plot of each mode's difference to the reference mode, saved atomically.

    ``effects`` has one row per comparison with columns ``model, freeze_mode, estimate, low, high,
    verdict`` (differences in percentage points; verdict one of better/worse/equivalent/
    inconclusive) and optionally ``recipe`` and ``reference_mode``. Rows without an interval
    (the reference itself) are skipped; the equivalence band (−margin, +margin) is shaded.
    """
    fig = forest_figure(effects, margin, title)
    _save(fig, path)


def forest_figure(effects: pd.DataFrame, margin: float, title: str = "") -> Figure:
    """The figure ``plot_forest`` saves: rows top to bottom in the order of ``forest_rows``."""
    margin = _margin(margin)
    rows = forest_rows(effects)
    fig = Figure(figsize=(7.5, 1.4 + 0.38 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.axvspan(
        -margin,
        margin,
        color=BAND_COLOUR,
        alpha=0.12,
        linewidth=0,
        gid="equivalence_band",
        label=f"equivalence band ±{margin:g} pp",
    )
    ax.axvline(0.0, color="0.3", linewidth=1.0, zorder=1)
    drawn = rows[rows["verdict"].notna()]
    ax.hlines(drawn["y"], drawn["low"], drawn["high"], color="0.25", linewidth=1.8, zorder=2)
    for verdict, (colour, marker) in VERDICT_STYLE.items():
        sub = drawn[drawn["verdict"] == verdict]
        if not sub.empty:
            ax.scatter(
                sub["estimate"],
                sub["y"],
                s=55,
                color=colour,
                marker=marker,
                edgecolors="0.15",
                linewidths=0.6,
                zorder=3,
                label=verdict,
            )
    headers = rows[rows["verdict"].isna()]
    for y in headers["y"].iloc[1:]:  # a rule above each model's block but the first
        ax.axhline(y - 0.5, color="0.7", linewidth=0.8)
    ax.set_yticks(rows["y"], rows["label"])
    for tick, is_header in zip(ax.get_yticklabels(), rows["verdict"].isna(), strict=True):
        if is_header:
            tick.set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row on top
    span = max(margin, float(np.nanmax(np.abs(drawn[["low", "high"]].to_numpy(float)))))
    ax.set_xlim(-1.15 * span, 1.15 * span)
    ax.set_xlabel(f"difference vs {_reference_label(effects)} (pp)")
    ax.grid(axis="x", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()  # under the axes: inside, it hid an interval's end
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False,
               fontsize="small")
    if title:  # over the figure, not the axes: the row labels push the axes right
        fig.suptitle(title, fontweight="bold")
    return fig


def forest_rows(effects: pd.DataFrame) -> pd.DataFrame:
    """The rows the forest plot draws, top to bottom: ``y, label, model, estimate, low, high, verdict``.

    Comparisons with a NaN estimate or interval are dropped. With several models each model's block
    is preceded by a header row (its name as label, NaN verdict). ``recipe`` joins the label
    (``mode (tuned)``) when not every drawn row is ``fixed``.
    """
    effects = _validate_effects(effects)
    keep = effects[["estimate", "low", "high"]].notna().all(axis=1)
    effects = effects[keep]
    if effects.empty:
        raise UserError("effects table has no comparison with an interval to plot")
    bad = effects[effects["low"] > effects["high"]]
    if not bad.empty:
        row = bad.iloc[0]
        raise UserError(
            f"effects table has an interval with low > high ({row['low']:g} > {row['high']:g}) "
            f"for model {row['model']}, freeze_mode {row['freeze_mode']}"
        )
    unknown = effects.loc[~effects["verdict"].isin(list(VERDICT_STYLE)), "verdict"]
    if not unknown.empty:
        raise UserError(
            f"effects table has verdict {unknown.iloc[0]!r}; allowed: {', '.join(VERDICT_STYLE)}"
        )
    show_source = "recipe" in effects.columns and set(effects["recipe"]) != {"fixed"}
    models = list(pd.unique(effects["model"]))
    out: list[dict] = []
    for model in models:
        if len(models) > 1:
            out.append({"label": str(model), "model": model, "verdict": None})
        for _, row in effects[effects["model"] == model].iterrows():
            label = str(row["freeze_mode"])
            if show_source:
                label = f"{label} ({row['recipe']})"
            out.append(
                {
                    "label": label,
                    "model": model,
                    "estimate": row["estimate"],
                    "low": row["low"],
                    "high": row["high"],
                    "verdict": row["verdict"],
                }
            )
    rows = pd.DataFrame(out, columns=["label", "model", "estimate", "low", "high", "verdict"])
    rows.insert(0, "y", np.arange(len(rows)))
    rows[["estimate", "low", "high"]] = rows[["estimate", "low", "high"]].astype(float)
    return rows


def _validate_effects(effects: pd.DataFrame) -> pd.DataFrame:
    require_table(effects, FOREST_COLUMNS, "effects table", "no comparison to plot")
    out = effects.copy()
    for col in ("estimate", "low", "high"):
        out[col] = _numeric_column(out[col], "effects", col)
    out["verdict"] = out["verdict"].map(lambda v: v.strip().lower() if isinstance(v, str) else v)
    if "recipe" in out.columns:
        out["recipe"] = out["recipe"].fillna("fixed").astype(str)
    return out


def _margin(margin: float) -> float:
    try:
        value = float(margin)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(
            f"equivalence margin must be a positive number of percentage points, got {margin!r}"
        )
    return value


def _reference_label(effects: pd.DataFrame) -> str:
    if "reference_mode" not in effects.columns:
        return "reference"
    refs = [str(r) for r in pd.unique(effects["reference_mode"].dropna())]
    return " / ".join(refs) or "reference"


# --- depth plot: test accuracy against the share of trainable parameters --------------------------

DEPTH_COLUMNS = ("model", "freeze_mode", "trainable_share", "test_acc")
DEPTH_JITTER_DEX = 0.012  # multiplicative x jitter of the per-run points, in decades
DEPTH_Y_MARGIN = 8.0  # accuracy points shown beyond the lowest and highest run or mean
LABEL_STACK_DEX = 0.15  # mode labels of means closer than this on x (decades) are stacked
LABEL_LEVELS = 4  # ... at most this many high, then from the bottom again (a 14-depth curve stays inside)


DEPTH_CONFIDENCE = 0.95  # the band around each depth curve: t interval of the mean over runs


def plot_depth(runs: pd.DataFrame, path: str | Path) -> None:
    """Test accuracy against trainable share (log x, in %), all models on one axis, saved atomically.

    Every run is a (slightly jittered) point. Per model (and recipe, when ``runs`` has several)
    one line joins the per-mode means of the prefix family (the depth curve: ``freeze_none``,
    ``freeze_patch``, ``freeze_patch_0_<k>``; ResNet's ``freeze_0_..``) with a band of the 95 % t
    interval of each mean over runs; modes of other families (surgical, BitFit, LayerNorm, frozen
    class token, LoRA, adapters, prompts) are means without a line. Every mean is labelled with its
    freeze mode; the Pareto frontier of each series' means (``pareto``) is ringed and joined by a
    dashed staircase.
    """
    fig = depth_figure(runs)
    _save(fig, path)


def depth_figure(runs: pd.DataFrame) -> Figure:
    """The figure ``plot_depth`` saves; the mean lines carry the series name as their label."""
    runs = _validate_depth(runs)
    means = _depth_means(runs)
    fig = Figure(figsize=(8.0, 5.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rng = np.random.default_rng(JITTER_SEED)
    low, high = np.log10(means["share_pct"].min()), np.log10(means["share_pct"].max())
    right_from = 10 ** (low + 0.8 * (high - low)) if high > low else math.inf
    for i, (series, sub) in enumerate(runs.groupby("series", sort=False)):
        colour = f"C{i}"
        jitter = 10 ** rng.uniform(-DEPTH_JITTER_DEX, DEPTH_JITTER_DEX, size=len(sub))
        ax.scatter(
            sub["trainable_share"] * 100 * jitter,
            sub["test_acc"],
            s=18,
            color=colour,
            alpha=0.45,
            edgecolors="none",
            zorder=2,
        )
        mean = means[means["series"] == series]
        curve = mean[mean["on_curve"]]
        ax.fill_between(
            curve["share_pct"],
            curve["ci_low"],
            curve["ci_high"],
            color=colour,
            alpha=0.18,
            linewidth=0,
            gid="depth_band",
        )
        ax.plot(
            curve["share_pct"],
            curve["test_mean"],
            color=colour,
            marker="o",
            markersize=7,
            linewidth=2.0,
            label=series,
            zorder=3,
        )
        other = mean[~mean["on_curve"]]
        if not other.empty:
            ax.errorbar(
                other["share_pct"],
                other["test_mean"],
                yerr=[other["test_mean"] - other["ci_low"], other["ci_high"] - other["test_mean"]],
                fmt="D",
                color=colour,
                markersize=6,
                linestyle="none",
                zorder=3,
                gid="other_family",
            )
        _draw_front(ax, mean, colour)
        _label_means(ax, mean, colour, below=i % 2 == 1, right_from=right_from)
    ax.set_xscale("log")
    ax.set_xlim(
        10 ** math.floor(np.log10(means["share_pct"].min() * 0.9)), means["share_pct"].max() * 1.25
    )
    # y: the runs and means with a margin, inside 0-100 %: with two or three runs a t band can span
    # hundreds of points and would flatten every curve; it is cut at the axes (the title says so).
    seen = pd.concat([runs["test_acc"], means["test_mean"]])
    ax.set_ylim(max(0.0, seen.min() - DEPTH_Y_MARGIN), min(100.0, seen.max() + DEPTH_Y_MARGIN))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}%"))
    ax.set_xlabel("Trainable parameters (% of model, log scale)")
    ax.set_ylabel("Test accuracy (%)")
    ax.set_title(f"lines: prefix depths, band {DEPTH_CONFIDENCE:.0%} CI of the mean over runs (cut at the "
                 "axes); diamonds: other strategies;\nringed, dashed: the Pareto frontier of the means "
                 "(no mode trains less and scores higher)", fontsize="small")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", frameon=True)
    return fig


def pareto(share: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """Which (share, accuracy) points are on the Pareto frontier: no other point has a share at
    most as large and an accuracy at least as high, one of them strictly (NaN: never on it)."""
    s, a = np.asarray(share, dtype=float), np.asarray(accuracy, dtype=float)
    ok = ~(np.isnan(s) | np.isnan(a))
    front = np.zeros(len(s), dtype=bool)
    for i in np.flatnonzero(ok):
        others = ok & (s <= s[i]) & (a >= a[i]) & ((s < s[i]) | (a > a[i]))
        front[i] = not others.any()
    return front


def _draw_front(ax: Axes, mean: pd.DataFrame, colour: str) -> None:
    """The Pareto frontier of one series' means: a dashed staircase through them, each ringed."""
    front = mean[pareto(mean["share_pct"], mean["test_mean"])].sort_values("share_pct")
    if front.empty:
        return
    x, y = front["share_pct"].to_numpy(), front["test_mean"].to_numpy()
    stairs = np.column_stack([np.repeat(x, 2)[1:], np.repeat(y, 2)[:-1]])  # steps-post through them
    ax.add_collection(LineCollection([stairs], colors=colour, linestyles="--", linewidths=1.2, zorder=2.5,
                                     gid="pareto_front"), autolim=False)
    ax.scatter(front["share_pct"], front["test_mean"], s=150, facecolors="none", edgecolors=colour,
               linewidths=1.2, zorder=4, gid="pareto_point")


def _label_means(
    ax: Axes, means: pd.DataFrame, colour: str, below: bool, right_from: float
) -> None:
    """Name each mean's freeze mode next to it (above, or below for every second series); labels of
    means closer than ``LABEL_STACK_DEX`` decades on x are stacked so they do not overlap, and
    those from ``right_from`` on sit left of their point so they stay inside the axes."""
    level, previous = 0, -math.inf
    for _, row in means.iterrows():
        x = float(np.log10(row["share_pct"]))
        level = (level + 1) % LABEL_LEVELS if x - previous < LABEL_STACK_DEX else 0
        previous = x
        dy = -(11 + 9 * level) if below else 6 + 9 * level
        right = row["share_pct"] >= right_from
        ax.annotate(
            row["freeze_mode"],
            (row["share_pct"], row["test_mean"]),
            xytext=(-4 if right else 4, dy),
            textcoords="offset points",
            ha="right" if right else "left",
            fontsize=7,
            color=colour,
            gid="mode_label",
        )


def _depth_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (series, freeze_mode): ``share_pct`` (median trainable share in %), ``test_mean``, the
    t interval ``ci_low``/``ci_high`` of the mean (NaN below two runs) and ``on_curve`` (a prefix-family
    mode), sorted by share within each series; ``runs`` is the output of the depth validation."""
    grouped = runs.groupby(["series", "freeze_mode"], sort=False)
    means = grouped.agg(
        model=("model", "first"),
        share_pct=("trainable_share", lambda s: float(s.median()) * 100),
        test_mean=("test_acc", "mean"),
        test_sd=("test_acc", lambda s: float(s.std(ddof=1)) if len(s) > 1 else math.nan),
        n=("test_acc", "size"),
    ).reset_index()
    half = sps.t.ppf(0.5 + DEPTH_CONFIDENCE / 2, (means["n"] - 1).clip(lower=1)) * means["test_sd"] / np.sqrt(
        means["n"])
    means["ci_low"], means["ci_high"] = means["test_mean"] - half, means["test_mean"] + half
    means["on_curve"] = [_on_depth_curve(m, f)
                         for m, f in zip(means["model"], means["freeze_mode"], strict=True)]
    order = {s: i for i, s in enumerate(pd.unique(runs["series"]))}
    means["_order"] = means["series"].map(order)
    means = means.sort_values(["_order", "share_pct"], kind="stable")
    return means.drop(columns=["_order", "test_sd", "model"])


def _on_depth_curve(model: str, mode: str) -> bool:
    """Whether ``mode`` is a prefix depth of ``model`` (models outside the registry: every mode)."""
    try:
        return freezing.family_of(model, mode) == "prefix"
    except UserError:
        return True


def _validate_depth(runs: pd.DataFrame) -> pd.DataFrame:
    require_table(runs, DEPTH_COLUMNS, "runs table", "nothing to plot against trainable share")
    out = runs.copy()
    for col in ("trainable_share", "test_acc"):
        out[col] = _numeric_column(out[col], "runs", col)
    out = out.dropna(subset=["model", "freeze_mode", "trainable_share", "test_acc"])
    if out.empty:
        raise UserError("runs table has no run with both trainable_share and test_acc")
    bad = out[(out["trainable_share"] <= 0) | (out["trainable_share"] > 1)]
    if not bad.empty:
        raise UserError(
            f"trainable_share must be a fraction in (0, 1], got {bad['trainable_share'].iloc[0]:g} "
            f"for model {bad['model'].iloc[0]}, freeze_mode {bad['freeze_mode'].iloc[0]}"
        )
    out["model"] = out["model"].astype(str)
    out["freeze_mode"] = out["freeze_mode"].astype(str)
    sources = out["recipe"].fillna("fixed").astype(str) if "recipe" in out.columns else None
    if sources is not None and sources.nunique() > 1:
        out["series"] = out["model"] + " (" + sources + ")"
    else:
        out["series"] = out["model"]
    return out


# --- shared helpers ---------------------------------------------------------------------------------


def _numeric_column(col: pd.Series, table: str, name: str) -> pd.Series:
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna()
    if bad.any():
        raise UserError(
            f"{table} table column {name} has a non-numeric value: {col[bad].iloc[0]!r}"
        )
    return values.astype(float)


def _save(fig: Figure, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=150, format=Path(path).suffix.lstrip(".") or "png")


def plot_message(message: str, path: str | Path) -> None:
    """A figure that says why there is nothing to plot (e.g. one run per mode: no interval)."""
    fig = Figure(figsize=(6, 1.5), layout="constrained")
    fig.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    _save(fig, path)


# --- diagnostics: weight change and CKA per block, one line per freeze mode ------------------------

DIAGNOSTICS_COLUMNS = ("model", "recipe", "freeze_mode", "part", "weight_change", "cka")
ZERO_MARK_SHARE = 0.25  # a frozen part (weight change 0) is drawn at this fraction of the smallest change


def plot_diagnostics(table: pd.DataFrame, path: str | Path) -> None:
    """Per model (and recipe) a row of two panels, saved atomically: the mean CKA between the
    initial and the fine-tuned representation by block, and the mean relative weight change by part
    (log scale; 0, a frozen part, is drawn as an x below the smallest change), one line per mode.

    ``table`` is ``compare.diagnostics_summary``: one row per (model, recipe, freeze_mode, part)
    with parts in forward order.
    """
    fig = diagnostics_figure(table)
    _save(fig, path)


def diagnostics_figure(table: pd.DataFrame) -> Figure:
    """The figure ``plot_diagnostics`` saves."""
    require_table(table, DIAGNOSTICS_COLUMNS, "diagnostics table", "no diagnostics to plot")
    groups = list(table.groupby(["model", "recipe"], sort=False))
    several_sources = table["recipe"].nunique() > 1
    fig = Figure(figsize=(13.0, 4.2 * len(groups)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for (ax_cka, ax_change), ((model, source), group) in zip(axes, groups, strict=True):
        parts = list(pd.unique(group["part"]))
        blocks = [p for p in parts if group.loc[group["part"] == p, "cka"].notna().any()]
        changes = group["weight_change"].to_numpy(float)
        positive = changes[np.isfinite(changes) & (changes > 0)]
        zero_at = positive.min() * ZERO_MARK_SHARE if positive.size else 1e-6
        for i, (mode, rows) in enumerate(group.groupby("freeze_mode", sort=False)):
            colour = f"C{i % 10}"
            cka = rows.set_index("part")["cka"].reindex(blocks).to_numpy(float)
            ax_cka.plot(range(len(blocks)), cka, marker="o", markersize=4, color=colour, label=mode)
            change = rows.set_index("part")["weight_change"].reindex(parts).to_numpy(float)
            x = np.arange(len(parts))
            shown = np.where(change > 0, change, np.nan)
            ax_change.plot(x, shown, marker="o", markersize=4, color=colour, label=mode)
            zero = change == 0
            ax_change.scatter(x[zero], np.full(zero.sum(), zero_at), marker="x", color=colour, s=22)
        name = f"{model} ({source})" if several_sources else str(model)
        ax_cka.set_xticks(range(len(blocks)), blocks, rotation=45, ha="right", fontsize="small")
        ax_cka.set_ylabel("CKA (initial, fine-tuned)")
        ax_cka.set_title(f"{name}: representation change by block (1 = unchanged)", fontweight="bold")
        ax_cka.grid(alpha=0.3)
        ax_cka.legend(loc="best", fontsize="x-small", frameon=True)
        ax_change.set_xticks(range(len(parts)), parts, rotation=45, ha="right", fontsize="small")
        ax_change.set_yscale("log")
        ax_change.set_ylabel("‖θ − θ₀‖ / ‖θ₀‖  (x: 0, frozen)")
        ax_change.set_title(f"{name}: relative weight change by part", fontweight="bold")
        ax_change.grid(alpha=0.3, which="both")
    return fig

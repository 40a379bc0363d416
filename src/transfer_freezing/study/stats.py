"""Statistics of the freezing comparison: per-mode summaries and paired tests against a
reference mode.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import UserError, first_line, require_table
from .inference import holm, sign_flip_test

REQUIRED_COLUMNS = ("model", "freeze_mode", "seed", "test_acc", "best_val_acc")
GROUP_KEYS = ("model", "recipe")
CONDITION = "condition"  # optional column: a training condition (e.g. plain / augmented), its own group
DEFAULT_RECIPE = "fixed"

SUMMARY_COLUMNS = (
    "model",
    "recipe",
    "freeze_mode",
    "reference_mode",
    "frozen_blocks",
    "trainable_share",
    "n",
    "test_mean",
    "test_std",
    "ci_low",
    "ci_high",
    "val_mean",
    "val_std",
    "n_pairs",
    "diff_vs_ref",
    "pvalue_runs_independent_t",
    "pvalue_runs_independent_t_holm",
    "pvalue_runs_independent_signflip",
    "pvalue_runs_independent_signflip_holm",
    "cohens_dz_per_run",
)
# Secondary per-run tests (CSV and JSON only): they treat the paired runs as independent, which
# runs of one k-fold study are not (they share clips and fold cells); the verdict comes from
# inference.design_variance instead.
T_P, SIGNFLIP_P, DZ = "pvalue_runs_independent_t", "pvalue_runs_independent_signflip", "cohens_dz_per_run"
TEST_COLUMNS = (T_P, f"{T_P}_holm", SIGNFLIP_P, f"{SIGNFLIP_P}_holm", DZ)
RUN_KEYS = ("seed", "repeat", "fold")  # what identifies a run within (model, recipe, mode)


def read_runs_csv(path: str | Path) -> pd.DataFrame:
    """Read per-seed results: the original study's format (timestamp,model,freeze_mode,seed,...)
    or this pipeline's ``reports/freezing_runs.csv`` (which adds run_id, lr and recipe)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"runs CSV not found: {path}")
    try:
        runs = pd.read_csv(path, dtype={"timestamp": str, "model": str, "freeze_mode": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"cannot parse runs CSV {path}: {first_line(err)}") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in runs.columns]
    if missing:
        raise UserError(
            f"runs CSV {path} lacks column(s) {', '.join(missing)}; "
            f"expected at least {','.join(REQUIRED_COLUMNS)}"
        )
    return runs


def validate_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Check columns and types; return a copy with ``recipe`` filled (``fixed`` if absent)."""
    require_table(runs, REQUIRED_COLUMNS, "runs table", "no runs to compare")
    for col in ("model", "freeze_mode", "seed"):
        if runs[col].isna().any():
            raise UserError(f"runs table has an empty {col} in row {runs[col].isna().idxmax()}")
    out = runs.copy()
    if "recipe" not in out.columns:  # an older runs CSV names its lr source (fixed / tuned) only
        out["recipe"] = out["lr_source"] if "lr_source" in out.columns else DEFAULT_RECIPE
    out["recipe"] = out["recipe"].fillna(DEFAULT_RECIPE).astype(str)
    for col in ("test_acc", "best_val_acc", "trainable_share", "frozen_blocks"):
        if col in out.columns:
            out[col] = _numeric(out[col], col)
    if CONDITION in out.columns:
        out[CONDITION] = out[CONDITION].fillna("").astype(str)
    run = run_keys(out)
    dup = out.duplicated(group_keys(out) + ["freeze_mode", *run], keep=False)
    if dup.any():
        row = out[dup].iloc[0]
        condition = f", condition {row[CONDITION]}" if CONDITION in out.columns else ""
        raise UserError(
            f"duplicate run: model {row['model']}{condition}, recipe {row['recipe']}, "
            f"freeze_mode {row['freeze_mode']}, " + ", ".join(f"{k} {row[k]}" for k in run)
        )
    return out


def run_keys(runs: pd.DataFrame) -> list[str]:
    """The columns that identify a run within a mode: seed, and repeat and fold where present."""
    return [k for k in RUN_KEYS if k == "seed" or (k in runs.columns and runs[k].notna().all())]


def group_keys(runs: pd.DataFrame) -> list[str]:
    """The columns whose values form one comparison group: model (and condition) and recipe."""
    return ["model", CONDITION, "recipe"] if CONDITION in runs.columns else list(GROUP_KEYS)


def _numeric(col: pd.Series, name: str) -> pd.Series:
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna()
    if bad.any():
        raise UserError(f"column {name} has a non-numeric value: {col[bad].iloc[0]!r}")
    return values.astype(float)


def summarize(
    runs: pd.DataFrame, reference_mode: str = "freeze_none", confidence: float = 0.95
) -> pd.DataFrame:
    """One row per (model, recipe, freeze_mode): mean/std/CI and paired tests vs the reference.

    Modes keep their order of first appearance in ``runs``; Holm adjusts the p-values across the
    non-reference modes within one (model, recipe) group. With a ``condition`` column each
    condition is a group of its own too, and the summary gains that column after ``model``.
    """
    if not 0.0 < confidence < 1.0:
        raise UserError(f"confidence must lie in (0, 1), got {confidence}")
    runs = validate_runs(runs)
    mode_order = list(pd.unique(runs["freeze_mode"]))
    keys = group_keys(runs)
    rows: list[dict] = []
    for values, group in runs.groupby(keys, sort=False):
        labels = dict(zip(keys, values, strict=True))
        for row in _summarize_group(group, labels["model"], labels["recipe"], mode_order,
                                    reference_mode, confidence, labels.get(CONDITION)):
            rows.append({**row, **labels})
    columns = list(SUMMARY_COLUMNS)
    if CONDITION in keys:
        columns.insert(1, CONDITION)
    summary = pd.DataFrame(rows, columns=columns)
    summary["frozen_blocks"] = summary["frozen_blocks"].astype("Int64")
    summary.attrs["confidence"] = confidence
    return summary


def _summarize_group(
    group: pd.DataFrame,
    model: str,
    recipe: str,
    mode_order: list[str],
    reference_mode: str,
    confidence: float,
    condition: str | None = None,
) -> list[dict]:
    modes = [m for m in mode_order if m in set(group["freeze_mode"])]
    if reference_mode not in modes:
        where = f"condition {condition}, " if condition is not None else ""
        raise UserError(
            f"reference mode {reference_mode} has no runs for model {model} "
            f"({where}recipe {recipe}); modes present: {', '.join(modes)}"
        )
    ref = _by_run(group, reference_mode)
    rows = []
    for mode in modes:
        sub = group[group["freeze_mode"] == mode]
        row = {
            "model": model,
            "recipe": recipe,
            "freeze_mode": mode,
            "reference_mode": reference_mode,
            **_describe(sub, confidence),
        }
        row.update(_paired(_by_run(group, mode), ref, is_reference=mode == reference_mode))
        rows.append(row)
    for col in (T_P, SIGNFLIP_P):
        adjusted = holm([r[col] for r in rows])
        for r, value in zip(rows, adjusted, strict=True):
            r[f"{col}_holm"] = value
    return rows


def _by_run(group: pd.DataFrame, mode: str) -> pd.Series:
    """Test accuracy per run, indexed by what pairs runs across modes: seed, repeat and fold."""
    sub = group[group["freeze_mode"] == mode].dropna(subset=["test_acc"])
    return sub.set_index(run_keys(group))["test_acc"]


def _first(sub: pd.DataFrame, col: str) -> float:
    if col not in sub.columns or sub[col].isna().all():
        return math.nan
    return float(sub[col].dropna().iloc[0])


def _describe(sub: pd.DataFrame, confidence: float) -> dict:
    test = sub["test_acc"].dropna().to_numpy(dtype=float)
    val = sub["best_val_acc"].dropna().to_numpy(dtype=float)
    mean, std = _mean_std(test)
    low, high = _t_interval(mean, std, len(test), confidence)
    val_mean, val_std = _mean_std(val)
    return {
        "frozen_blocks": _first(sub, "frozen_blocks"),
        "trainable_share": _first(sub, "trainable_share"),
        "n": len(test),
        "test_mean": mean,
        "test_std": std,
        "ci_low": low,
        "ci_high": high,
        "val_mean": val_mean,
        "val_std": val_std,
    }


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    mean = float(np.mean(x)) if len(x) else math.nan
    std = float(np.std(x, ddof=1)) if len(x) >= 2 else math.nan
    return mean, std


def _t_interval(mean: float, std: float, n: int, confidence: float) -> tuple[float, float]:
    if n < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, df=n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def _paired(mode: pd.Series, ref: pd.Series, is_reference: bool) -> dict:
    """Paired comparison mode − reference over the runs (seed, repeat, fold) both have, treating
    the runs as independent (secondary: the CSV and JSON only).

    Exact sign-flip permutation test instead of Wilcoxon: exact for the small N of seeds, and
    finite (never NaN) when every paired difference is equal.
    """
    seeds = mode.index.intersection(ref.index)
    diff = (mode.loc[seeds] - ref.loc[seeds]).to_numpy(dtype=float)
    out = {"n_pairs": len(seeds), "diff_vs_ref": float(diff.mean()) if len(diff) else math.nan}
    out.update(dict.fromkeys(TEST_COLUMNS, math.nan))
    if is_reference:
        return {**out, "diff_vs_ref": 0.0}
    sd = float(np.std(diff, ddof=1)) if len(diff) >= 2 else 0.0
    if sd > 0:  # zero spread (or < 2 pairs): the t statistic and d_z are undefined
        out[T_P] = float(stats.ttest_rel(mode.loc[seeds], ref.loc[seeds]).pvalue)
        out[DZ] = float(diff.mean()) / sd
    if len(diff) >= 2:
        out[SIGNFLIP_P] = sign_flip_test(diff)
    return out


def to_markdown(summary: pd.DataFrame, margin: float | None = None) -> str:
    """The main table, one row per mode: trainable share, test accuracy, runs × clips, Δ test
    against the reference with its interval, the verdict and the MDD (80 % power), plus a note on
    the model. The per-run tests stay in the CSV and JSON (``TEST_COLUMNS``)."""
    confidence = summary.attrs.get("confidence", 0.95)
    judged = "verdict" in summary.columns
    def col(name: str) -> pd.Series:
        return summary[name] if name in summary.columns else pd.Series(math.nan, index=summary.index)

    is_ref = summary["freeze_mode"] == summary["reference_mode"]
    table = pd.DataFrame(
        {
            "model": summary["model"],
            **({CONDITION: summary[CONDITION]} if CONDITION in summary.columns else {}),
            "recipe": summary["recipe"],
            "freeze mode": summary["freeze_mode"],
            "trainable share": summary["trainable_share"].map(_percent),
            "test acc % (mean ± sd)": [
                _pm(m, s) for m, s in zip(summary["test_mean"], summary["test_std"], strict=True)
            ],
            "runs × clips": [_runs_clips(n, c) for n, c in zip(summary["n"], _clips(summary, judged),
                                                                strict=True)],
            f"Δ test (pp) [{confidence:.0%} CI]": [
                "reference" if ref else _delta(est, lo, hi, note)
                for ref, est, lo, hi, note in zip(is_ref, col("estimate"), col("low"), col("high"),
                                                  col("note"), strict=True)
            ],
            "verdict": ["–" if ref or pd.isna(v) else v
                        for ref, v in zip(is_ref, col("verdict"), strict=True)],
            "MDD 80 % (pp)": ["–" if ref else _fmt(v, "{:.1f}")
                              for ref, v in zip(is_ref, col("mdd"), strict=True)],
        }
    )
    if summary["trainable_share"].isna().all():
        table = table.drop(columns="trainable share")
    markdown = table.to_markdown(index=False, disable_numparse=True)
    return f"{markdown}\n\n{_footnote(summary, margin)}\n"


def _clips(summary: pd.DataFrame, judged: bool) -> pd.Series:
    """Distinct test clips per row (the reference: its group's), NaN when unknown."""
    if not judged or "n_clips" not in summary.columns:
        return pd.Series(math.nan, index=summary.index)
    keys = [k for k in ("model", CONDITION, "recipe") if k in summary.columns]
    clips = summary["n_clips"].where(summary["n_clips"] > 0)
    return clips.fillna(clips.groupby([summary[k] for k in keys]).transform("max"))


def _runs_clips(runs: float, clips: float) -> str:
    return f"{int(runs)}" if pd.isna(clips) else f"{int(runs)} × {int(clips)}"


def _delta(estimate: float, low: float, high: float, note: object) -> str:
    if pd.isna(estimate):
        return "–"
    if pd.isna(low):
        return f"{estimate:+.1f} ({note})" if isinstance(note, str) and note else f"{estimate:+.1f}"
    return f"{estimate:+.1f} [{low:+.1f}, {high:+.1f}]"


def _footnote(summary: pd.DataFrame, margin: float | None = None) -> str:
    refs = ", ".join(f"`{r}`" for r in pd.unique(summary.get("reference_mode", pd.Series([]))))
    group = "model, condition and recipe" if CONDITION in summary.columns else "model and recipe"
    designs = set(summary["design"].dropna()) if "design" in summary.columns else set()
    units = {"cells": "fold cells (training sets: repeat × fold) are the independent units, seeds nested "
                      "in them, clips crossed with runs and shared by repeats",
             "runs": "one training set: its runs (seeds) are the independent units, clips crossed with "
                     "them (the interval is conditional on that training set)",
             "one run": "one run: no interval"}
    model = "; ".join(units[d] for d in ("cells", "runs", "one run") if d in designs)
    per_clip = "n_clips" in summary.columns and bool((summary["n_clips"] > 0).any())
    where = " (per-clip predictions)" if per_clip else (
        " (per-run accuracies: the clip-level variance is not separable)")
    band = f"±{margin:g} pp" if margin else "the margin"
    return (
        f"Δ: mean paired difference against {refs or 'the reference mode'} within each {group}, on the "
        f"same runs and clips; interval from one variance model{where} (study/inference.py, "
        f"docs/statistics.md){': ' + model if model else ''}. Verdict: better / worse when the difference "
        f"test rejects 0, equivalent when TOST rejects a difference beyond {band}, else inconclusive; "
        f"Holm-adjusted over one family holding both claims of every mode of the {group}. MDD: the "
        "smallest difference this design detects with 80 % power. Per-run tests that treat runs as "
        "independent (t, sign-flip, d_z) and the Nadeau-Bengio corrected t are in the CSV and JSON only."
    )


def _fmt(value: float, pattern: str) -> str:
    return "–" if pd.isna(value) else pattern.format(value)


def _percent(share: float) -> str:
    return _fmt(share * 100 if pd.notna(share) else share, "{:.2f} %")


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.1f}" if pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def fmt_p(p: float) -> str:
    """A p-value as the tables print it: three decimals, '<0.001', or '–' when undefined."""
    return _p(p)


def _p(p: float) -> str:
    if pd.isna(p):
        return "–"
    return "<0.001" if p < 0.0005 else f"{p:.3f}"


def condition_contrast(runs: pd.DataFrame, mode: str = "freeze_none",
                       confidence: float = 0.95) -> pd.DataFrame:
    """One mode's test accuracy under each condition against the first condition, per model and recipe.

    The conditions were run with their own seeds (the original's augmented runs are not its plain
    seeds), so the comparison is unpaired: Welch's t-test (scipy.stats.ttest_ind, equal_var=False)
    and its interval for the difference of means. One row per (model, recipe, condition) after
    the first condition in ``runs``' order; empty without a ``condition`` column.
    """
    runs = validate_runs(runs)
    columns = ["model", "recipe", "mode", "condition", "baseline", "n", "n_baseline", "mean",
               "mean_baseline", "diff", "ci_low", "ci_high", "welch_p"]
    if CONDITION not in runs.columns:
        return pd.DataFrame(columns=columns)
    rows = []
    for (model, recipe), group in runs.groupby(list(GROUP_KEYS), sort=False):
        group = group[group["freeze_mode"] == mode]
        conditions = list(pd.unique(group[CONDITION]))
        base = group.loc[group[CONDITION] == conditions[0], "test_acc"].dropna().to_numpy(float) \
            if conditions else np.array([])
        for other in conditions[1:]:
            x = group.loc[group[CONDITION] == other, "test_acc"].dropna().to_numpy(float)
            row = {"model": model, "recipe": recipe, "mode": mode, "condition": other,
                   "baseline": conditions[0], "n": len(x), "n_baseline": len(base),
                   "mean": float(x.mean()), "mean_baseline": float(base.mean()),
                   "diff": float(x.mean() - base.mean()), "ci_low": math.nan, "ci_high": math.nan,
                   "welch_p": math.nan}
            if len(x) >= 2 and len(base) >= 2 and (x.std() > 0 or base.std() > 0):
                test = stats.ttest_ind(x, base, equal_var=False)
                interval = test.confidence_interval(confidence)
                row.update(ci_low=float(interval.low), ci_high=float(interval.high),
                           welch_p=float(test.pvalue))
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def contrast_lines(contrast: pd.DataFrame, confidence: float = 0.95) -> list[str]:
    """``condition_contrast``'s rows as sentences."""
    lines = []
    for r in contrast.to_dict("records"):
        source = f", {r['recipe']}" if r["recipe"] != DEFAULT_RECIPE else ""
        interval = ("" if pd.isna(r["ci_low"]) else
                    f", {confidence:.0%} CI [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]")
        lines.append(
            f"{r['model']}{source}, {r['mode']}: {r['condition']} {r['mean']:.1f} % (n={r['n']}) vs "
            f"{r['baseline']} {r['mean_baseline']:.1f} % (n={r['n_baseline']}): {r['diff']:+.1f} pp"
            f"{interval}, Welch p {_p(r['welch_p'])} (unpaired: other seeds)"
        )
    return lines

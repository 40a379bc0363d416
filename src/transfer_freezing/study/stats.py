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
GROUP_KEYS = ("model", "lr_source")
CONDITION = "condition"  # optional column: a training condition (e.g. plain / augmented), its own group
DEFAULT_LR_SOURCE = "fixed"

SUMMARY_COLUMNS = (
    "model",
    "lr_source",
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
    "t_p",
    "t_p_holm",
    "signflip_p",
    "signflip_p_holm",
    "cohens_dz",
)
_TEST_COLUMNS = ("t_p", "t_p_holm", "signflip_p", "signflip_p_holm", "cohens_dz")


def read_runs_csv(path: str | Path) -> pd.DataFrame:
    """Read per-seed results: the original study's format (timestamp,model,freeze_mode,seed,...)
    or this pipeline's ``reports/freezing_runs.csv`` (which adds run_id, lr and lr_source)."""
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


# With seed, what identifies a run within a mode where the table has them: its fold and repeat.
RUN_KEYS = ("fold", "repeat")


def validate_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Check columns and types; return a copy with ``lr_source`` filled (``fixed`` if absent)."""
    require_table(runs, REQUIRED_COLUMNS, "runs table", "no runs to compare")
    for col in ("model", "freeze_mode", "seed"):
        if runs[col].isna().any():
            raise UserError(f"runs table has an empty {col} in row {runs[col].isna().idxmax()}")
    out = runs.copy()
    if "lr_source" not in out.columns:
        out["lr_source"] = DEFAULT_LR_SOURCE
    out["lr_source"] = out["lr_source"].fillna(DEFAULT_LR_SOURCE).astype(str)
    for col in ("test_acc", "best_val_acc", "trainable_share", "frozen_blocks"):
        if col in out.columns:
            out[col] = _numeric(out[col], col)
    if CONDITION in out.columns:
        out[CONDITION] = out[CONDITION].fillna("").astype(str)
    keys = group_keys(out) + ["freeze_mode", "seed"] + [k for k in RUN_KEYS if k in out.columns]
    dup = out.duplicated(keys, keep=False)
    if dup.any():
        row = out[dup].iloc[0]
        condition = f", condition {row[CONDITION]}" if CONDITION in keys else ""
        raise UserError(
            f"duplicate run: model {row['model']}{condition}, lr_source {row['lr_source']}, "
            f"freeze_mode {row['freeze_mode']}, seed {row['seed']}"
            + "".join(f", {k} {row[k]}" for k in RUN_KEYS if k in keys)
        )
    return out


def group_keys(runs: pd.DataFrame) -> list[str]:
    """The columns whose values form one comparison group: model (and condition) and lr source."""
    return ["model", CONDITION, "lr_source"] if CONDITION in runs.columns else list(GROUP_KEYS)


def _numeric(col: pd.Series, name: str) -> pd.Series:
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna()
    if bad.any():
        raise UserError(f"column {name} has a non-numeric value: {col[bad].iloc[0]!r}")
    return values.astype(float)


def summarize(
    runs: pd.DataFrame, reference_mode: str = "freeze_none", confidence: float = 0.95
) -> pd.DataFrame:
    """One row per (model, lr_source, freeze_mode): mean/std/CI and paired tests vs the reference.

    Modes keep their order of first appearance in ``runs``; Holm adjusts the p-values across the
    non-reference modes within one (model, lr_source) group. With a ``condition`` column each
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
        for row in _summarize_group(group, labels["model"], labels["lr_source"], mode_order,
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
    lr_source: str,
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
            f"({where}lr_source {lr_source}); modes present: {', '.join(modes)}"
        )
    ref = _by_run(group, reference_mode)
    rows = []
    for mode in modes:
        sub = group[group["freeze_mode"] == mode]
        row = {
            "model": model,
            "lr_source": lr_source,
            "freeze_mode": mode,
            "reference_mode": reference_mode,
            **_describe(sub, confidence),
        }
        row.update(_paired(_by_run(group, mode), ref, is_reference=mode == reference_mode))
        rows.append(row)
    for col in ("t_p", "signflip_p"):
        adjusted = holm([r[col] for r in rows])
        for r, value in zip(rows, adjusted, strict=True):
            r[f"{col}_holm"] = value
    return rows


def _by_run(group: pd.DataFrame, mode: str) -> pd.Series:
    """Test accuracy per run, indexed by what pairs runs across modes: the seed (fold, repeat)."""
    sub = group[group["freeze_mode"] == mode].dropna(subset=["test_acc"])
    keys = ["seed"] + [k for k in RUN_KEYS if k in sub.columns and sub[k].notna().all()]
    return sub.set_index(keys)["test_acc"]


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
    """Paired comparison mode − reference over the runs (seed, fold) both have.

    Exact sign-flip permutation test instead of Wilcoxon: exact for the small N of seeds, and
    finite (never NaN) when every paired difference is equal.
    """
    seeds = mode.index.intersection(ref.index)
    diff = (mode.loc[seeds] - ref.loc[seeds]).to_numpy(dtype=float)
    out = {"n_pairs": len(seeds), "diff_vs_ref": float(diff.mean()) if len(diff) else math.nan}
    out.update(dict.fromkeys(_TEST_COLUMNS, math.nan))
    if is_reference:
        return {**out, "diff_vs_ref": 0.0}
    sd = float(np.std(diff, ddof=1)) if len(diff) >= 2 else 0.0
    if sd > 0:  # zero spread (or < 2 pairs): the t statistic and d_z are undefined
        out["t_p"] = float(stats.ttest_rel(mode.loc[seeds], ref.loc[seeds]).pvalue)
        out["cohens_dz"] = float(diff.mean()) / sd
    if len(diff) >= 2:
        out["signflip_p"] = sign_flip_test(diff)
    return out


def to_markdown(summary: pd.DataFrame) -> str:
    """A rounded Markdown table of ``summarize``'s output plus a line naming the tests."""
    table = pd.DataFrame(
        {
            "model": summary["model"],
            **({CONDITION: summary[CONDITION]} if CONDITION in summary.columns else {}),
            "lr": summary["lr_source"],
            "freeze mode": summary["freeze_mode"],
            "frozen blocks": summary["frozen_blocks"].map(lambda v: _fmt(v, "{:d}")),
            "trainable": summary["trainable_share"].map(_percent),
            "n": summary["n"],
            "test acc % (mean ± sd)": [
                _pm(m, s) for m, s in zip(summary["test_mean"], summary["test_std"], strict=True)
            ],
            _ci_label(summary): [
                _ci(lo, hi) for lo, hi in zip(summary["ci_low"], summary["ci_high"], strict=True)
            ],
            "val acc %": [
                _pm(m, s) for m, s in zip(summary["val_mean"], summary["val_std"], strict=True)
            ],
            "Δ vs ref": summary["diff_vs_ref"].map(lambda v: _fmt(v, "{:+.1f}")),
            "p (t)": summary["t_p"].map(_p),
            "p (t, Holm)": summary["t_p_holm"].map(_p),
            "p (sign-flip)": summary["signflip_p"].map(_p),
            "p (sign-flip, Holm)": summary["signflip_p_holm"].map(_p),
            "d_z": summary["cohens_dz"].map(lambda v: _fmt(v, "{:+.2f}")),
        }
    )
    absent = {"frozen blocks": "frozen_blocks", "trainable": "trainable_share"}
    table = table.drop(columns=[k for k, v in absent.items() if summary[v].isna().all()])
    markdown = table.to_markdown(index=False, disable_numparse=True)
    return f"{markdown}\n\n{_footnote(summary)}\n"


def _footnote(summary: pd.DataFrame) -> str:
    refs = ", ".join(f"`{r}`" for r in pd.unique(summary.get("reference_mode", pd.Series([]))))
    group = "model, condition and lr source" if CONDITION in summary.columns else "model and lr source"
    return (
        f"Δ and p: paired by seed against {refs or 'the reference mode'} within each {group}"
        "; two-sided paired t-test (scipy.stats.ttest_rel) and exact sign-flip "
        "permutation test of the mean paired difference, p-values Holm-adjusted across the "
        f"non-reference modes of each {group}. sd: sample standard deviation "
        "(ddof=1); CI: t-interval of the mean; d_z: mean paired difference / its sd."
    )


def _ci_label(summary: pd.DataFrame) -> str:
    confidence = summary.attrs.get("confidence")
    return f"{confidence:.0%} CI of mean" if confidence else "CI of mean"


def _fmt(value: float, pattern: str) -> str:
    return "–" if pd.isna(value) else pattern.format(value)


def _percent(share: float) -> str:
    return _fmt(share * 100 if pd.notna(share) else share, "{:.2f} %")


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.1f}" if pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def _ci(low: float, high: float) -> str:
    return "–" if pd.isna(low) else f"[{low:.1f}, {high:.1f}]"


def fmt_p(p: float) -> str:
    """A p-value as the tables print it: three decimals, '<0.001', or '–' when undefined."""
    return _p(p)


def _p(p: float) -> str:
    if pd.isna(p):
        return "–"
    return "<0.001" if p < 0.0005 else f"{p:.3f}"


def condition_contrast(runs: pd.DataFrame, mode: str = "freeze_none",
                       confidence: float = 0.95) -> pd.DataFrame:
    """One mode's test accuracy under each condition against the first condition, per model and lr source.

    The conditions were run with their own seeds (the original's augmented runs are not its plain
    seeds), so the comparison is unpaired: Welch's t-test (scipy.stats.ttest_ind, equal_var=False)
    and its interval for the difference of means. One row per (model, lr_source, condition) after
    the first condition in ``runs``' order; empty without a ``condition`` column.
    """
    runs = validate_runs(runs)
    columns = ["model", "lr_source", "mode", "condition", "baseline", "n", "n_baseline", "mean",
               "mean_baseline", "diff", "ci_low", "ci_high", "welch_p"]
    if CONDITION not in runs.columns:
        return pd.DataFrame(columns=columns)
    rows = []
    for (model, lr_source), group in runs.groupby(list(GROUP_KEYS), sort=False):
        group = group[group["freeze_mode"] == mode]
        conditions = list(pd.unique(group[CONDITION]))
        base = group.loc[group[CONDITION] == conditions[0], "test_acc"].dropna().to_numpy(float) \
            if conditions else np.array([])
        for other in conditions[1:]:
            x = group.loc[group[CONDITION] == other, "test_acc"].dropna().to_numpy(float)
            row = {"model": model, "lr_source": lr_source, "mode": mode, "condition": other,
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
        source = f", {r['lr_source']} lr" if r["lr_source"] != DEFAULT_LR_SOURCE else ""
        interval = ("" if pd.isna(r["ci_low"]) else
                    f", {confidence:.0%} CI [{r['ci_low']:+.1f}, {r['ci_high']:+.1f}]")
        lines.append(
            f"{r['model']}{source}, {r['mode']}: {r['condition']} {r['mean']:.1f} % (n={r['n']}) vs "
            f"{r['baseline']} {r['mean_baseline']:.1f} % (n={r['n_baseline']}): {r['diff']:+.1f} pp"
            f"{interval}, Welch p {_p(r['welch_p'])} (unpaired: other seeds)"
        )
    return lines

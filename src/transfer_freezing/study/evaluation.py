"""Per-clip evaluation of a study: clip tables, verdicts per mode, power, val-vs-test agreement."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from ..errors import UserError
from . import inference, stats

HEADLINE = ("freeze_none", "freeze_patch", "freeze_patch_0_5")  # the original's claimed pattern


def clip_table(predictions: dict[tuple, pd.DataFrame], split: str = "test") -> pd.DataFrame:
    """The clips of ``split`` from every run: (model, recipe, mode, seed, fold, repeat, clip_id, correct).

    ``predictions`` maps (model, recipe, mode, seed, fold, repeat) to a run's predictions.csv.
    """
    parts = []
    for (model, recipe, mode, seed, fold, repeat), frame in predictions.items():
        rows = frame.loc[frame["split"] == split, ["clip_id", "correct"]]
        parts.append(rows.assign(model=model, recipe=recipe, mode=mode, seed=seed, fold=fold,
                                 repeat=repeat))
    if not parts:
        raise UserError("no per-clip predictions to evaluate")
    return pd.concat(parts, ignore_index=True)


def verdicts(test: pd.DataFrame, val: pd.DataFrame | None, reference: str, margin: float,
             confidence: float, folds: int | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per (model, recipe, mode) against ``reference``, and the study-level checks.

    Columns: ``inference.judge_all``'s (the difference on test clips with the design model's
    interval, its unadjusted and Holm-adjusted p-values of both claims, the verdict, the MDD, the
    design and the note "one run: no interval" where no interval exists), the difference on
    validation clips, and for k-fold the Nadeau-Bengio corrected resampled t over the per-run
    differences (secondary, named for what it assumes).
    """
    rows, checks = [], {}
    for (model, recipe), group in test.groupby(["model", "recipe"], sort=False):
        if reference not in set(group["mode"]):
            raise UserError(f"reference mode {reference} has no runs for model {model} ({recipe})")
        modes = [m for m in pd.unique(group["mode"]) if m != reference]
        if not modes:
            continue
        judged = inference.judge_all(group, reference, margin, confidence, modes=modes)
        val_group = None if val is None else val[(val["model"] == model) & (val["recipe"] == recipe)]
        for row in judged.to_dict("records"):
            mode = row["mode"]
            out = {"model": model, "recipe": recipe, "freeze_mode": mode, **row}
            if val_group is not None and len(val_group):
                out["val_estimate"] = _mean_difference(val_group, mode, reference)
            if folds:
                out.update(_corrected_t(group, mode, reference, folds, confidence))
            rows.append(out)
        key = f"{model}/{recipe}"
        if val_group is not None and len(val_group):
            checks[f"{key}/val_vs_test"] = inference.val_test_agreement(
                _accuracy_by_mode(val_group), _accuracy_by_mode(group), reference)
        if set(HEADLINE) <= set(group["mode"]) and reference == HEADLINE[0]:
            checks[f"{key}/headline"] = headline_contrast(group)
    return pd.DataFrame(rows), checks


INTERACTION_COLUMNS = ("model", "recipe_a", "recipe_b", "freeze_mode", "reference", "estimate", "low", "high",
                       "se", "dof", "p_different", "p_equivalent", "p_different_holm", "p_equivalent_holm",
                       "verdict", "mdd", "n_runs", "n_cells", "n_clips", "design", "note", "margin",
                       "confidence")


def interactions(test: pd.DataFrame, reference: str, margin: float, confidence: float) -> pd.DataFrame:
    """The mode x recipe interaction per model and pair of recipes (A before B, in the table's
    order): each mode both recipes trained, with the reference, as ``inference.judge_interactions``
    (one Holm family per model and pair). Empty (these columns) with fewer than two recipes."""
    rows = []
    for model, group in test.groupby("model", sort=False):
        recipes = list(pd.unique(group["recipe"]))
        modes_of = {r: set(group.loc[group["recipe"] == r, "mode"]) for r in recipes}
        for i, a in enumerate(recipes):
            for b in recipes[i + 1:]:
                shared = modes_of[a] & modes_of[b]
                modes = [m for m in pd.unique(group["mode"]) if m in shared and m != reference]
                if reference not in shared or not modes:
                    continue
                judged = inference.judge_interactions(group, reference, a, b, margin, confidence, modes)
                rows += [{"model": model, "freeze_mode": r["mode"], **r} for r in judged.to_dict("records")]
    return pd.DataFrame(rows).reindex(columns=list(INTERACTION_COLUMNS))


def interaction_lines(table: pd.DataFrame) -> list[str]:
    """One Markdown line per row of ``interactions``."""
    lines = []
    for r in table.to_dict("records"):
        what = (f"{r['model']}: ({r['freeze_mode']} − {r['reference']}) under {r['recipe_b']} minus under "
                f"{r['recipe_a']} = {r['estimate']:+.1f} pp")
        if r["note"]:
            lines.append(f"- {what} ({r['note']})")
            continue
        level = round(100 * r["confidence"])
        lines.append(f"- {what}, {level} % interval [{r['low']:+.1f}, {r['high']:+.1f}], "
                     f"p = {stats.fmt_p(r['p_different_holm'])} (Holm), **{r['verdict']}** "
                     f"({r['n_runs']} paired runs in {r['n_cells']} fold cell(s), {r['n_clips']} clips)")
    return lines


def verdicts_from_runs(runs: pd.DataFrame, reference: str, margin: float, confidence: float) -> pd.DataFrame:
    """``verdicts`` from a per-run table (``--from-csv``): the same model at run level, one row per
    (model, [condition,] recipe, mode)."""
    keys = stats.group_keys(runs)
    rows = []
    for values, group in runs.groupby(keys, sort=False):
        labels = dict(zip(keys, values, strict=True))
        if reference not in set(group["freeze_mode"]):
            continue  # stats.summarize names the missing reference
        modes = [m for m in pd.unique(group["freeze_mode"]) if m != reference]
        if not modes:
            continue
        judged = inference.judge_runs(group, reference, margin, confidence, modes=modes)
        rows += [{**labels, "freeze_mode": r["mode"], **r} for r in judged.to_dict("records")]
    return pd.DataFrame(rows)


def score_differences(runs: pd.DataFrame, reference: str, confidence: float,
                      scores: dict[str, bool]) -> pd.DataFrame:
    """Every score column beyond accuracy, mode against ``reference``, in each comparison group.

    ``scores`` maps a per-run column (``test_macro_f1``, ...) to whether higher is better. One row
    per (group, mode, score): the mean over the mode's runs, and for a non-reference mode
    ``inference.compare_scores``' difference, interval and Holm-adjusted p (one family per group
    and score), with ``verdict`` better / worse (p_holm < 1 − confidence, read by the score's
    direction) or inconclusive. A column no run has is skipped.
    """
    keys = stats.group_keys(runs)
    alpha = 1.0 - confidence
    rows = []
    for column, higher_is_better in scores.items():
        if column not in runs.columns or runs[column].isna().all():
            continue
        for values, group in runs.groupby(keys, sort=False):
            labels = dict(zip(keys, values, strict=True))
            means = group.groupby("freeze_mode", sort=False)[column].mean()
            judged = {}
            if reference in means.index and len(means) > 1:
                table = inference.compare_scores(group.dropna(subset=[column]), reference, column,
                                                 confidence, modes=[m for m in means.index if m != reference])
                judged = {r["mode"]: r for r in table.to_dict("records")}
            for mode, mean in means.items():
                row = {**labels, "freeze_mode": mode, "score": column, "mean": float(mean)}
                if mode in judged:
                    r = judged[mode]
                    better = r["estimate"] > 0 if higher_is_better else r["estimate"] < 0
                    verdict = ("" if r["note"] else "inconclusive" if not r["p_different_holm"] < alpha
                               else "better" if better else "worse")
                    row.update({k: r[k] for k in ("estimate", "low", "high", "p_different",
                                                  "p_different_holm", "n_runs", "design", "note")},
                               verdict=verdict)
                rows.append(row)
    return pd.DataFrame(rows)


def _accuracy_by_mode(clips: pd.DataFrame) -> dict[str, float]:
    return {m: 100.0 * float(g["correct"].mean()) for m, g in clips.groupby("mode", sort=False)}


def _mean_difference(clips: pd.DataFrame, mode: str, reference: str) -> float:
    acc = _accuracy_by_mode(clips)
    return acc.get(mode, math.nan) - acc.get(reference, math.nan)


def _per_run(clips: pd.DataFrame, mode: str, reference: str) -> pd.Series:
    """Accuracy difference (pp) per paired run (seed, repeat, fold)."""
    acc = clips[clips["mode"].isin([mode, reference])].groupby(["mode", *inference.RUN_KEYS])[
        "correct"].mean().mul(100).unstack("mode")
    return (acc[mode] - acc[reference]).dropna()


NB = "nadeau_bengio_corrected_t"  # assumes fold differences equicorrelated with rho = n_test / n


def _corrected_t(clips: pd.DataFrame, mode: str, reference: str, folds: int, confidence: float) -> dict:
    """Nadeau & Bengio's corrected resampled t over the per-run differences of repeated k-fold."""
    diffs = _per_run(clips, mode, reference)
    complete = diffs.groupby(level=["seed", "repeat"]).filter(lambda d: len(d) == folds)
    if len(complete) < folds or folds < 2:
        return {}
    grid = complete.unstack("fold").to_numpy(dtype=float)
    n = clips.loc[clips["mode"] == mode, "clip_id"].nunique()
    n_test = n / folds
    result = inference.corrected_resampled_t(grid, n_train=int(round(n - 2 * n_test)),
                                             n_test=int(round(n_test)), confidence=confidence)
    return {f"ci_low_{NB}": result["low"], f"ci_high_{NB}": result["high"], f"pvalue_{NB}": result["p"]}


def headline_contrast(clips: pd.DataFrame) -> dict:
    """The original's claim as one contrast: freeze_patch below freeze_none AND freeze_patch_0_5
    above freeze_patch, tested jointly (intersection-union: the larger one-sided p), each one-sided
    test on the design model's (estimate, se, dof), as the verdicts are."""
    none, patch, deep = HEADLINE
    out: dict = {}
    contrasts = {"first": (patch, none, "less"), "second": (deep, patch, "greater")}
    for name, (mode, ref, tail) in contrasts.items():
        iv = inference.difference_interval(clips, mode, ref)
        if math.isnan(iv.se):
            t = math.nan
        else:
            t = iv.estimate / iv.se if iv.se > 0 else math.copysign(math.inf, iv.estimate or 1.0)
        p = stats_t_one_sided(t, iv.dof, tail)
        out[f"estimate_{name}"], out[f"p_{name}"] = iv.estimate, p
        out["n_runs"] = min(out.get("n_runs", iv.n_runs), iv.n_runs)
    out["p"] = max(out["p_first"], out["p_second"])
    return out


def stats_t_one_sided(t: float, dof: float, tail: str) -> float:
    """One-sided p of a t statistic (NaN when undefined: one run)."""
    if math.isnan(t) or math.isnan(dof):
        return math.nan
    return float(scipy_stats.t.cdf(t, dof) if tail == "less" else scipy_stats.t.sf(t, dof))


def plan_lines(test: pd.DataFrame, reference: str, effect: float, alpha: float = 0.05,
               margin: float | None = None) -> list[str]:
    """Runs (and cells) needed to detect ``effect`` pp and to show equivalence at ``margin``, per
    mode, from the variance components this study measured on its per-clip predictions."""
    lines = []
    for (model, recipe), group in test.groupby(["model", "recipe"], sort=False):
        for mode in [m for m in pd.unique(group["mode"]) if m != reference]:
            comp = inference.variance_components(group, mode, reference)
            plan = inference.plan(effect, comp, alpha, margin=margin)
            lines.append(_plan_line(f"{model} ({recipe}) {mode}", reference, plan, comp))
    return lines


def plan_lines_from_runs(runs: pd.DataFrame, reference: str, effect: float, alpha: float = 0.05,
                         margin: float | None = None) -> list[str]:
    """The same from a per-run table (the original's CSV, or freezing_runs.csv of any design)."""
    lines = []
    for (model, recipe), group in runs.groupby(["model", "recipe"], sort=False):
        for mode in [m for m in pd.unique(group["freeze_mode"]) if m != reference]:
            comp = inference.components_from_seed_csv(group, mode, reference)
            plan = inference.plan(effect, comp, alpha, margin=margin)
            lines.append(_plan_line(f"{model} ({recipe}) {mode}", reference, plan, comp))
    return lines


def _plan_line(label: str, reference: str, plan: dict, comp: dict) -> str:
    """One sentence per claim: how many runs and cells, or why none suffices."""
    said = []
    for claim, target in (("different", f"detect {plan['effect']:g} pp"),
                          ("equivalent", f"show equivalence at ±{plan['margin']:g} pp")):
        if f"passes_{claim}" not in plan:
            continue
        passes = plan[f"passes_{claim}"]
        floor = plan[f"floor_{claim}"]
        if passes is None:
            said.append(f"no number of runs can {target}: the clip-level variance of the mode effect sets a "
                        f"floor of {floor:.2f} pp on these {plan['n_clips']} clips; add clips: a larger or "
                        "second dataset")
        else:
            how = " on this one split"
            if plan["design"] == "cells":
                how = (f", {plan[f'cells_{claim}']} cells ({passes} repeats of the {plan['folds']} folds, "
                       "one seed per cell)")
            said.append(f"{plan[f'runs_{claim}']} runs{how} {target}")
    if plan["clip_identified"]:
        floor_note = (f"clip-level sd of the mode effect {comp['sd_clip_effect']:.1f} pp, floor "
                      f"{plan['floor_different']:.2f} pp")
    elif comp["source"].startswith("per-run"):
        floor_note = ("per-run accuracies cannot show the clip-level variance of the mode effect: no floor "
                      "assumed (plan from per-clip predictions to see it)")
    else:
        floor_note = "clip-level variance not identified (no clip scored by two runs): no floor assumed"
    have = f"measured on {comp['n_runs']} runs in {comp['n_cells']} cell(s); {floor_note}"
    return (f"{label} vs {reference}: " + "; ".join(said)
            + f" (80 % power, alpha {plan['alpha']:g} per comparison; {have})")


def val_test_from_runs(runs: pd.DataFrame, reference: str) -> list[str]:
    """Val-vs-test agreement of the mode effects from per-seed accuracies (the original's CSV)."""
    lines = []
    keys = ["model", "condition", "recipe"] if "condition" in runs.columns else ["model", "recipe"]
    for values, group in runs.groupby(keys, sort=False):
        val = group.groupby("freeze_mode", sort=False)["best_val_acc"].mean().to_dict()
        test = group.groupby("freeze_mode", sort=False)["test_acc"].mean().to_dict()
        if reference not in val:
            continue
        agree = inference.val_test_agreement(val, test, reference)
        lines.append(agreement_line(f"{values[0]} ({', '.join(values[1:])})", agree))
    return lines


def agreement_line(label: str, agree: dict) -> str:
    flips = agree["sign_flips"]
    effects = ", ".join(f"{m} {agree['val_effects'][m]:+.1f} val / {agree['test_effects'][m]:+.1f} test"
                        for m in agree["val_effects"])
    rho = "–" if np.isnan(agree["spearman"]) else f"{agree['spearman']:+.2f}"
    said = f"sign flips between val and test: {', '.join(flips)}" if flips else "no sign flips"
    return f"{label}: val-vs-test Spearman of mode effects {rho}; {said} ({effects})"

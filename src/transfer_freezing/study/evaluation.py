"""Per-clip evaluation of a study: clip tables, verdicts per mode, power, val-vs-test agreement."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..errors import UserError
from . import inference

HEADLINE = ("freeze_none", "freeze_patch", "freeze_patch_0_5")  # the original's claimed pattern


def clip_table(predictions: dict[tuple, pd.DataFrame], split: str = "test") -> pd.DataFrame:
    """The clips of ``split`` from every run: (model, lr_source, mode, seed, fold, repeat, clip_id, correct).

    ``predictions`` maps (model, lr_source, mode, seed, fold, repeat) to a run's predictions.csv.
    """
    parts = []
    for (model, lr_source, mode, seed, fold, repeat), frame in predictions.items():
        rows = frame.loc[frame["split"] == split, ["clip_id", "correct"]]
        parts.append(rows.assign(model=model, lr_source=lr_source, mode=mode, seed=seed, fold=fold,
                                 repeat=repeat))
    if not parts:
        raise UserError("no per-clip predictions to evaluate")
    return pd.concat(parts, ignore_index=True)


def verdicts(test: pd.DataFrame, val: pd.DataFrame | None, reference: str, margin: float,
             confidence: float, folds: int | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per (model, lr_source, mode) against ``reference``, and the study-level checks.

    Columns: the difference on test clips with the crossed runs x clips interval
    (``inference.difference_interval``), its p-value, TOST's p against ``margin``, the verdict
    (and with Holm across the modes of the group), the minimal detectable difference of the design
    as run (80 % power), the difference on validation clips, and for repeated k-fold the
    Nadeau-Bengio corrected resampled t interval over the per-run differences.
    """
    rows, checks = [], {}
    for (model, lr_source), group in test.groupby(["model", "lr_source"], sort=False):
        if reference not in set(group["mode"]):
            raise UserError(f"reference mode {reference} has no runs for model {model} ({lr_source})")
        modes = [m for m in pd.unique(group["mode"]) if m != reference]
        paired = {m: len(_per_run(group, m, reference)) for m in modes}
        judgeable = [m for m in modes if paired[m] >= 2]
        judged = (inference.judge_all(group, reference, margin, confidence, modes=judgeable)
                  if judgeable else pd.DataFrame())
        val_group = None if val is None else val[(val["model"] == model) & (val["lr_source"] == lr_source)]
        for mode in modes:
            if paired[mode] < 2:  # one paired run: no run-to-run variance, so no interval or verdict
                rows.append({"model": model, "lr_source": lr_source, "freeze_mode": mode, "mode": mode,
                             "reference": reference, "margin": margin, "confidence": confidence,
                             "estimate": _mean_difference(group, mode, reference), "verdict": "inconclusive",
                             "verdict_holm": "inconclusive", "n_runs": paired[mode],
                             "n_clips": group.loc[group["mode"] == mode, "clip_id"].nunique()})
        for row in judged.to_dict("records"):
            mode = row["mode"]
            comp = inference.variance_components(group, mode, reference)
            out = {"model": model, "lr_source": lr_source, "freeze_mode": mode, **row,
                   "mdd": _mdd(comp, group, mode), "sd_run": comp["sd_run"], "sd_clip": comp["sd_clip"]}
            if val_group is not None and len(val_group):
                out["val_estimate"] = _mean_difference(val_group, mode, reference)
            if folds:
                out.update(_corrected_t(group, mode, reference, folds, confidence))
            rows.append(out)
        key = f"{model}/{lr_source}"
        if val_group is not None and len(val_group):
            checks[f"{key}/val_vs_test"] = inference.val_test_agreement(
                _accuracy_by_mode(val_group), _accuracy_by_mode(group), reference)
        if set(HEADLINE) <= set(group["mode"]) and reference == HEADLINE[0]:
            checks[f"{key}/headline"] = headline_contrast(group)
    return pd.DataFrame(rows), checks


def _accuracy_by_mode(clips: pd.DataFrame) -> dict[str, float]:
    return {m: 100.0 * float(g["correct"].mean()) for m, g in clips.groupby("mode", sort=False)}


def _mean_difference(clips: pd.DataFrame, mode: str, reference: str) -> float:
    acc = _accuracy_by_mode(clips)
    return acc.get(mode, math.nan) - acc.get(reference, math.nan)


def _per_run(clips: pd.DataFrame, mode: str, reference: str) -> pd.Series:
    """Accuracy difference (pp) per paired run (seed, fold, repeat)."""
    acc = clips[clips["mode"].isin([mode, reference])].groupby(["mode", "seed", "fold", "repeat"])[
        "correct"].mean().mul(100).unstack("mode")
    return (acc[mode] - acc[reference]).dropna()


def _mdd(comp: dict, clips: pd.DataFrame, mode: str) -> float:
    n_runs = int(comp["n_runs"])
    if n_runs < 2:
        return math.nan
    total = clips.loc[clips["mode"] == mode, "clip_id"].nunique()
    return inference.minimal_detectable_difference(
        comp["sd_run"], comp["sd_clip"], n_runs, int(comp["n_clips_per_run"]),
        sd_clip_effect=comp["sd_clip_effect"], n_clips_total=total)


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
    return {"nb_low": result["low"], "nb_high": result["high"], "nb_p": result["p"]}


def headline_contrast(clips: pd.DataFrame) -> dict:
    """The original's claim as one contrast: freeze_patch below freeze_none AND freeze_patch_0_5
    above freeze_patch, tested jointly (intersection-union: the larger one-sided p)."""
    none, patch, deep = HEADLINE
    first = _per_run(clips, patch, none)
    second = _per_run(clips, deep, patch)
    common = first.index.intersection(second.index)
    if len(common) < 2:
        return {"p": math.nan, "n_runs": len(common)}
    result = inference.joint_contrast(first.loc[common].to_numpy(), second.loc[common].to_numpy(),
                                      alternatives=("less", "greater"))
    return {**result, "n_runs": len(common)}


def plan_lines(test: pd.DataFrame, reference: str, effect: float, alpha: float = 0.05) -> list[str]:
    """How many runs (seeds x folds x repeats) would detect ``effect`` pp, per mode, from the
    variance components this study measured."""
    lines = []
    for (model, lr_source), group in test.groupby(["model", "lr_source"], sort=False):
        for mode in [m for m in pd.unique(group["mode"]) if m != reference]:
            comp = inference.variance_components(group, mode, reference)
            total = group.loc[group["mode"] == mode, "clip_id"].nunique()
            plan = inference.plan(effect, comp, int(comp["n_clips_per_run"]), alpha, n_clips_total=total)
            lines.append(_plan_line(f"{model} ({lr_source}) {mode}", reference, effect, plan, comp))
    return lines


def plan_lines_from_runs(runs: pd.DataFrame, reference: str, effect: float, alpha: float = 0.05,
                         n_clips: int = 100) -> list[str]:
    """The same from a per-seed table (the original's CSV): its paired sd is the total."""
    lines = []
    for (model, lr_source), group in runs.groupby(["model", "lr_source"], sort=False):
        for mode in [m for m in pd.unique(group["freeze_mode"]) if m != reference]:
            comp = inference.components_from_seed_csv(group, mode, reference)
            plan = inference.plan(effect, comp, n_clips, alpha)
            lines.append(_plan_line(f"{model} ({lr_source}) {mode}", reference, effect, plan, comp))
    return lines


def _plan_line(label: str, reference: str, effect: float, plan: dict, comp: dict) -> str:
    have = f"measured sd run {comp['sd_run']:.2f} pp, clip {comp['sd_clip']:.1f} pp, {comp['n_runs']} runs"
    if plan["n_runs"] is None:
        return (f"{label} vs {reference}: no number of runs detects {effect:g} pp (floor "
                f"{plan['mdd_limit']:.2f} pp from the fixed clips; add clips or folds); {have}")
    return (f"{label} vs {reference}: {plan['n_runs']} runs (seeds x folds x repeats) detect "
            f"{effect:g} pp with 80 % power at alpha {0.05:g}; {have}")


def val_test_from_runs(runs: pd.DataFrame, reference: str) -> list[str]:
    """Val-vs-test agreement of the mode effects from per-seed accuracies (the original's CSV)."""
    lines = []
    keys = ["model", "condition", "lr_source"] if "condition" in runs.columns else ["model", "lr_source"]
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

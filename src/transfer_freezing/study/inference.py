"""Inference on per-clip predictions: mode − reference intervals, tests, verdicts and run planning.

One variance model serves the interval, the tests, the verdicts, the MDD and the plans
(``design_variance``); see its docstring and docs/statistics.md for the assumptions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import UserError, require_table

CLIP_COLUMNS = ("mode", "seed", "fold", "repeat", "clip_id", "correct")
RUN_KEYS = ["seed", "repeat", "fold"]  # one training run per (mode, seed, repeat, fold)
CELL_KEYS = ["repeat", "fold"]  # one fold cell = one training set
PASS_KEYS = ["seed", "repeat"]  # one pass over the clips: every fold of a repeat, for one seed
EXACT_SIGN_FLIP_MAX_N = 20
METHODS = ("moments", "bootstrap")
VERDICTS = ("better", "worse", "equivalent", "inconclusive")
ONE_RUN = "one run: no interval"
_ALTERNATIVES = ("two-sided", "less", "greater")


@dataclass(frozen=True)
class Interval:
    """Accuracy difference mode − reference in percentage points, with a two-sided interval.

    ``dof`` is the t reference distribution's degrees of freedom (``nan`` for the bootstrap's
    percentile interval); ``n_runs`` counts the paired runs (seed, repeat, fold), ``n_cells`` the
    fold cells (training sets) and ``n_clips`` the distinct clips. ``design`` names the branch of
    the variance model (``cells``, ``runs`` or ``one run``); ``note`` is non-empty when no interval
    exists (then low, high, se and dof are NaN).
    """

    estimate: float
    low: float
    high: float
    se: float
    method: str
    n_runs: int
    n_clips: int
    dof: float = math.inf
    confidence: float = 0.95
    n_cells: int = 1
    design: str = "runs"
    note: str = ""


# --------------------------------------------------------------------------- the variance model


@dataclass(frozen=True)
class DesignFit:
    """``design_variance`` for a batch of B studies of one layout: arrays of shape (B,).

    ``var_clip``: σ_b², the between-clip variance of a clip's true difference (NaN when no clip
    is scored by two runs); ``var_pass``: the training variance of one pass mean (cells design:
    one repeat, as many seeds per cell as measured; runs design: one run) with the clip part
    removed; ``var_seed_cell``: the within-cell between-seed variance of a run mean (NaN without
    two seeds in a cell).
    """

    estimate: np.ndarray
    se: np.ndarray
    dof: np.ndarray
    var_clip: np.ndarray
    var_pass: np.ndarray
    var_seed_cell: np.ndarray
    design: str
    n_runs: int
    n_cells: int
    n_clips: int
    n_passes: int
    folds: int  # cells per pass (K); 1 for the runs design
    seeds_per_cell: float
    floor_dof: int


def _between(means: np.ndarray, weights: np.ndarray, present: np.ndarray) -> np.ndarray:
    """C/(C−1) Σ w² (ȳ − ȳ_w)² over the last axis (w normalised over the present units): the
    variance of the weighted mean of C independent units, zero only when all unit means agree."""
    w = np.where(present, weights, 0.0)
    w = w / np.maximum(w.sum(-1, keepdims=True), 1e-300)
    centre = np.sum(w * np.where(present, means, 0.0), -1, keepdims=True)
    c = present.sum(-1)
    ss = np.sum(w**2 * np.where(present, means - centre, 0.0) ** 2, -1)
    return np.where(c >= 2, ss * c / np.maximum(c - 1, 1), np.nan)


def _clip_variance(centred: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """σ_b² from pairs of runs scoring the same clip, and the variance of that estimate.

    ``centred`` (B, N, U): each run's differences centred within its fold cell's clips (so a
    shared cell or run effect drops out), zero where absent. Two runs' centred values at one clip
    share only the clip's effect b, so the mean product over such pairs estimates σ_b² (up to
    (N−1)/N); its variance treats clips as the independent units (a ratio estimator).
    """
    n_at = present.sum(-1)  # runs scoring each clip
    total = centred.sum(-1)
    products = (total**2 - np.sum(centred**2, -1)) / 2  # Σ over pairs of runs at each clip
    pairs = n_at * (n_at - 1) / 2
    n = present.any(-1).sum(-1)
    denom = pairs.sum(-1) * np.maximum(n - 1, 1) / np.maximum(n, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        var_b = products.sum(-1) / denom
        resid = products - var_b[:, None] * pairs
        var_of = np.sum(resid**2, -1) / denom**2 * n / np.maximum(n - 1, 1)
    identified = denom > 0
    return np.where(identified, var_b, np.nan), np.where(identified, var_of, np.nan)


def design_variance(diff: np.ndarray, fold: np.ndarray, mask: np.ndarray | None = None) -> DesignFit:
    """Estimate, standard error and degrees of freedom of the mean paired difference.

    ``diff`` (B, S, R, N): mode − reference (pp) for seed s, repeat r, clip i; ``fold`` (B, R, N):
    the fold that holds clip i out in repeat r (−1 where absent); ``mask`` (B, S, R, N): 1 where
    the paired cell exists (default: all). One fixed test set is R = 1 with every fold 0.

    The model matches how the grid is built: d = μ + b_clip + c_cell + a_run + e. Clips are
    crossed with runs (b: the mode effect varies between clips); a fold cell (repeat, fold) is
    one training set whose effect c every seed of the cell shares; a run (seed within cell) adds
    its own a, independent between cells (the torch seed derives from seed, repeat and fold); e
    is the run × clip interaction plus the 0/1 noise. The two arms of a pair share the run and
    the clips, so d is formed per (run, clip) and they stay paired. The estimate is the mean of
    d over all paired cells.

    Variance of the mean from between-unit variation of independent units (never zero unless
    every unit mean is equal), plus the clip part that no number of runs removes:

    * ``cells`` design (k-fold: ≥ 2 fold cells in a repeat). Within one repeat the cells hold
      disjoint clips and are separate training sets, so the cell means are independent and
      V_r = C/(C−1) Σ_k (n_k/n_r)² (ȳ_k − ȳ_r)² estimates Var(repeat mean) with C − 1 df, clip,
      cell, seed and residual noise included. Repeats re-partition the same clips: their means
      share b̄, so Var(mean) = Σ_r W_r² V_r + (1 − Σ_r W_r²) σ_b²/N with W_r the repeat's share
      of the cells. A repeat with a single cell makes the cells one pass (an approximation: the
      clips they share are then ignored).
    * ``runs`` design (one training set: one fixed split, several seeds). The runs are the
      independent units (the interval is conditional on the one training set, whose effect is
      not estimable); they score the same clips, so Var(mean) = between-run variance of the run
      means (S/(S−1) Σ w_s² (ȳ_s − ȳ)², S − 1 df) + σ_b²/N.
    * ``one run``: no interval (se and dof NaN).

    σ_b² comes from pairs of runs scoring the same clip (``_clip_variance``), truncated at 0; it
    is NaN (and unused) when no clip is scored twice. Degrees of freedom: Satterthwaite over the
    terms (V_r with C_r − 1, σ_b² with 2σ_b⁴/Var(σ̂_b²)), floored at the independent between-unit
    contrasts (Σ_r (C_r − 1), or S − 1) and at 1. The variance is floored at s_d²/n, the
    variance of the mean if every paired cell were independent: every shared effect in the
    model adds positive covariance, so the true variance is never below it.
    """
    d = np.asarray(diff, dtype=float)
    if d.ndim != 4:
        raise ValueError(f"diff must be (B, S, R, N), got shape {d.shape}")
    b, s, r, n = d.shape
    m = np.ones_like(d) if mask is None else np.asarray(mask, dtype=float)
    fold = np.asarray(fold)
    k = int(fold.max()) + 1
    onehot = (fold[..., None] == np.arange(k)).astype(float)  # (B, R, N, K)
    dm = d * m
    n_obs = m.sum((1, 2, 3))
    estimate = dm.sum((1, 2, 3)) / n_obs
    run_n = np.einsum("bsrn,brnk->bsrk", m, onehot)
    run_sum = np.einsum("bsrn,brnk->bsrk", dm, onehot)
    run_mean = run_sum / np.maximum(run_n, 1)
    cell_n, cell_sum = run_n.sum(1), run_sum.sum(1)  # (B, R, K)
    runs_present, cells_present = run_n[0] > 0, cell_n[0] > 0
    n_runs, n_cells = int(runs_present.sum()), int(cells_present.sum())
    clips_present = m.any((1, 2))  # (B, N)
    n_clips = int(clips_present[0].sum())
    # each run's differences centred within its cell's clips: only the clip effect stays shared
    centre = np.take_along_axis(run_mean, np.broadcast_to(np.maximum(fold, 0)[:, None], d.shape), -1)
    centred = np.where(m > 0, d - centre, 0.0).reshape(b, s * r, n).transpose(0, 2, 1)
    var_clip, var_of_var_clip = _clip_variance(centred, m.reshape(b, s * r, n).transpose(0, 2, 1) > 0)
    clip_part = np.nan_to_num(var_clip) / max(n_clips, 1)  # signed: truncating it would bias se up
    var_seed = _within_cell_seed_variance(run_mean, run_n)
    nan = np.full(b, np.nan)
    if n_runs < 2:
        return DesignFit(estimate, nan, nan, var_clip, nan, var_seed, "one run", n_runs, n_cells, n_clips,
                         1, 1, 1.0, 0)
    if n_cells >= 2:
        per_repeat = cells_present.sum(-1)
        if per_repeat[per_repeat > 0].min() < 2:  # a repeat with one cell: all cells one pass
            cell_n, cell_sum = cell_n.reshape(b, 1, r * k), cell_sum.reshape(b, 1, r * k)
        present = cell_n > 0
        n_r = cell_n.sum(-1)
        v_r = _between(cell_sum / np.maximum(cell_n, 1), cell_n, present)  # (B, R')
        keep = n_r > 0
        w_r = n_r / n_r.sum(-1, keepdims=True)
        terms = np.where(keep, w_r**2 * np.nan_to_num(v_r), 0.0)
        unit_dof = np.maximum(present.sum(-1) - 1, 1)
        clip_term = (1.0 - np.sum(w_r**2, -1)) * clip_part
        train = terms.sum(-1)
        train_dof_part = np.sum(np.where(keep, terms**2 / unit_dof, 0.0), -1)
        floor = int(np.sum(np.maximum(present[0].sum(-1) - 1, 0)))
        passes = int(keep[0].sum())
        var_pass = np.nanmean(np.where(keep, v_r, np.nan), -1) - clip_part
        design, folds = "cells", int(round(n_cells / max(passes, 1)))
        seeds_per_cell = n_runs / n_cells
    else:  # one training set: the runs are the units
        flat_n, flat_sum = run_n.reshape(b, s * r * k), run_sum.reshape(b, s * r * k)
        present = flat_n > 0
        train = _between(flat_sum / np.maximum(flat_n, 1), flat_n, present)
        unit_dof = n_runs - 1
        clip_term = clip_part
        train_dof_part = train**2 / unit_dof
        floor, passes, folds, design = n_runs - 1, n_runs, 1, "runs"
        var_pass = train * n_runs
        seeds_per_cell = float(n_runs)
    coef = clip_term / np.where(clip_part != 0, clip_part, 1.0)
    var_of_clip_term = (coef / max(n_clips, 1)) ** 2 * np.nan_to_num(var_of_var_clip)
    clip_dof_part = np.where(clip_part != 0, var_of_clip_term / 2, 0.0)
    variance = train + clip_term
    with np.errstate(invalid="ignore", divide="ignore"):
        satterthwaite = variance**2 / (train_dof_part + clip_dof_part)
    dof = np.maximum(np.nan_to_num(satterthwaite, nan=np.inf), max(floor, 1))
    # zero only when every unit mean agrees and no clip effect shows: then the variance of the mean
    # as if every paired cell were independent (a lower bound: the model's shared effects only add)
    independent = np.sum(m * (d - estimate[:, None, None, None]) ** 2, (1, 2, 3)) / np.maximum(n_obs - 1, 1)
    variance = np.where(variance > 0, variance, np.where(train > 0, train, independent / n_obs))
    return DesignFit(estimate, np.sqrt(variance), dof, var_clip, np.maximum(var_pass, 0.0), var_seed, design,
                     n_runs, n_cells, n_clips, passes, folds, seeds_per_cell, max(floor, 1))


def _within_cell_seed_variance(run_mean: np.ndarray, run_n: np.ndarray) -> np.ndarray:
    """Pooled within-cell variance of the run means (seeds of one cell; NaN without two)."""
    present = run_n > 0  # (B, S, R, K)
    count = present.sum(1)
    mean = np.sum(np.where(present, run_mean, 0.0), 1) / np.maximum(count, 1)
    ss = np.sum(np.where(present, run_mean - mean[:, None], 0.0) ** 2, 1)
    dof = np.maximum(count - 1, 0).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(dof > 0, ss.sum((1, 2)) / dof, np.nan)


def _holm_rows(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment along the last axis (no NaN)."""
    order = np.argsort(p, axis=-1, kind="stable")
    ranked = np.take_along_axis(p, order, -1)
    m = p.shape[-1]
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked), axis=-1)
    out = np.empty_like(adjusted)
    np.put_along_axis(out, order, adjusted, -1)
    return out


def _p_different(estimate, se, dof):
    """Two-sided t p-value of δ = 0 (vectorised; NaN without an se)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.abs(np.asarray(estimate, float)) / np.asarray(se, float)
    return np.where(np.asarray(se) > 0, 2 * stats.t.sf(t, dof), np.where(np.asarray(estimate) == 0, 1.0, 0.0))


def _p_equivalent(estimate, se, dof, margin: float):
    """TOST p-value of |δ| ≥ margin (vectorised): the larger of the two one-sided p-values."""
    estimate, se = np.asarray(estimate, float), np.asarray(se, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = stats.t.sf((estimate + margin) / se, dof)
        upper = stats.t.cdf((estimate - margin) / se, dof)
    exact = np.where(np.abs(estimate) < margin, 0.0, 1.0)
    return np.where(se > 0, np.maximum(lower, upper), exact)


def _verdict_rule(estimate, p_different, p_equivalent, alpha: float) -> np.ndarray:
    """better / worse when the (Holm-adjusted) difference test rejects δ = 0, else equivalent when
    the (Holm-adjusted) TOST rejects |δ| ≥ margin, else inconclusive (NaN p: inconclusive)."""
    estimate = np.asarray(estimate, float)
    different = np.nan_to_num(np.asarray(p_different, float), nan=1.0) < alpha
    equivalent = np.nan_to_num(np.asarray(p_equivalent, float), nan=1.0) < alpha
    return np.where(different, np.where(estimate > 0, "better", "worse"),
                    np.where(equivalent, "equivalent", "inconclusive"))


def batch_verdicts(fit: DesignFit, margin: float, confidence: float = 0.95) -> dict[str, np.ndarray]:
    """Interval and verdict of every study in ``fit`` for one mode: the family is its two claims
    (different, equivalent), Holm-adjusted together, exactly as ``judge_all`` does per study."""
    alpha = 1.0 - confidence
    half = stats.t.ppf((1 + confidence) / 2, fit.dof) * fit.se
    p = np.stack([_p_different(fit.estimate, fit.se, fit.dof),
                  _p_equivalent(fit.estimate, fit.se, fit.dof, margin)], -1)
    adjusted = _holm_rows(np.nan_to_num(p, nan=1.0))
    return {"low": fit.estimate - half, "high": fit.estimate + half,
            "verdict": _verdict_rule(fit.estimate, adjusted[:, 0], adjusted[:, 1], alpha)}


# --------------------------------------------------------------------------- input


def _check_clip_table(clips: pd.DataFrame) -> None:
    require_table(clips, CLIP_COLUMNS, "clip table", "no predictions to compare")
    empty = clips[["mode", "seed", "fold", "repeat", "clip_id"]].isna()
    if empty.any(axis=None):
        col = empty.any().idxmax()
        raise UserError(f"clip table has an empty {col} in row {empty[col].idxmax()}")
    correct = pd.to_numeric(clips["correct"], errors="coerce")
    bad = correct.isna() | ~correct.isin([0, 1])
    if bad.any():
        raise UserError(f"column correct must hold 0 or 1, found {clips['correct'][bad].iloc[0]!r}")


def _codes(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Dense integer codes 0..k−1 of the distinct value combinations of ``columns``."""
    code = np.zeros(len(frame), dtype=np.int64)
    for col in columns:
        values, uniques = pd.factorize(frame[col])
        code = code * len(uniques) + values
    return np.unique(code, return_inverse=True)[1]


@dataclass(frozen=True)
class _Cells:
    """Paired cells (one per run and clip evaluated under both modes), as codes."""

    diff: np.ndarray  # correct[mode] − correct[reference], in percentage points (−100, 0, 100)
    seed: np.ndarray
    repeat: np.ndarray
    fold: np.ndarray
    clip: np.ndarray
    pass_: np.ndarray  # pass code, one per (seed, repeat): for the bootstrap

    @property
    def run(self) -> np.ndarray:
        return _codes(pd.DataFrame({"s": self.seed, "r": self.repeat, "f": self.fold}), ["s", "r", "f"])

    @property
    def n_runs(self) -> int:
        return int(self.run.max()) + 1

    @property
    def n_clips(self) -> int:
        return int(self.clip.max()) + 1

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(diff, fold, mask) in ``design_variance``'s layout, for one study (B = 1)."""
        s, r, n = int(self.seed.max()) + 1, int(self.repeat.max()) + 1, self.n_clips
        diff, mask = np.zeros((1, s, r, n)), np.zeros((1, s, r, n))
        diff[0, self.seed, self.repeat, self.clip] = self.diff
        mask[0, self.seed, self.repeat, self.clip] = 1.0
        fold = np.full((1, r, n), -1, dtype=np.int64)
        fold[0, self.repeat, self.clip] = self.fold
        if np.any(fold[0, self.repeat, self.clip] != self.fold):
            raise UserError("a clip is held out by two folds of one repeat (for different seeds); the "
                            "folds of a repeat must be the same for every seed")
        return diff, fold, mask


def _paired_cells(clips: pd.DataFrame, mode: str, reference: str) -> _Cells:
    """The cells (run, clip) scored under both ``mode`` and ``reference``, with their difference."""
    _check_clip_table(clips)
    if mode == reference:
        raise UserError(f"mode and reference are both {mode}: nothing to compare")
    present = set(clips["mode"])
    for name in (mode, reference):
        if name not in present:
            raise UserError(f"mode {name} has no clip predictions; modes present: {sorted(present)}")
    sub = clips.loc[clips["mode"].isin([mode, reference])]
    run = _codes(sub, RUN_KEYS)
    clip = _codes(sub, ["clip_id"])
    cell = run * (int(clip.max()) + 1) + clip
    correct = pd.to_numeric(sub["correct"]).to_numpy(dtype=float)
    is_mode = (sub["mode"] == mode).to_numpy()
    for flag in (is_mode, ~is_mode):
        keys = cell[flag]
        _, first = np.unique(keys, return_index=True)
        if first.size < keys.size:
            row = sub[flag].iloc[np.setdiff1d(np.arange(keys.size), first)[0]]
            raise UserError(
                f"clip {row['clip_id']} is scored twice by mode {row['mode']} in run "
                f"(seed {row['seed']}, repeat {row['repeat']}, fold {row['fold']})"
            )
    _, at_mode, at_ref = np.intersect1d(
        cell[is_mode], cell[~is_mode], assume_unique=True, return_indices=True
    )
    if at_mode.size == 0:
        raise UserError(f"modes {mode} and {reference} share no (seed, repeat, fold, clip) cell")

    def paired(codes: np.ndarray) -> np.ndarray:
        return np.unique(codes[is_mode][at_mode], return_inverse=True)[1]

    return _Cells(
        diff=100.0 * (correct[is_mode][at_mode] - correct[~is_mode][at_ref]),
        seed=paired(_codes(sub, ["seed"])),
        repeat=paired(_codes(sub, ["repeat"])),
        fold=paired(_codes(sub, ["fold"])),
        clip=paired(clip),
        pass_=paired(_codes(sub, PASS_KEYS)),
    )


def _fit(cells: _Cells) -> DesignFit:
    return design_variance(*cells.arrays())


# --------------------------------------------------------------------------- interval


def difference_interval(
    clips: pd.DataFrame,
    mode: str,
    reference: str,
    confidence: float = 0.95,
    n_boot: int = 2000,
    rng: np.random.Generator | int = 0,
    *,
    method: str = "moments",
) -> Interval:
    """Accuracy difference ``mode − reference`` (pp) with an interval covering clip AND run noise.

    Unit of analysis: the paired cell (run, clip) with d = correct[mode] − correct[reference],
    where a run is (seed, repeat, fold) and both modes score the same clips in it. The estimate is
    the mean of d over all paired cells (for k-fold, every clip once per seed and repeat).

    ``method="moments"`` (default): the design's variance model (``design_variance``: fold cells
    as independent units, clips crossed, seeds nested in cells) with a t reference. One paired
    run gives no interval: NaN bounds and ``note`` "one run: no interval".

    ``method="bootstrap"``: the two-level (pigeonhole) cluster bootstrap: resample passes (seed,
    repeat, carrying their folds' runs) and clip ids, each with replacement, ``n_boot`` times;
    percentile interval. No resampling scheme is unbiased for a crossed layout (McCullagh, 2000):
    this one counts the 0/1 noise about three times (Owen, 2007), so it is conservative; it is
    kept as a cross-check. ``n_boot`` and ``rng`` only matter here.
    """
    _check_confidence(confidence)
    if method not in METHODS:
        raise UserError(f"unknown interval method {method!r}; choose one of {', '.join(METHODS)}")
    cells = _paired_cells(clips, mode, reference)
    estimate = float(cells.diff.mean())
    if method == "bootstrap":
        return _bootstrap_interval(cells, estimate, confidence, n_boot, np.random.default_rng(rng))
    fit = _fit(cells)
    return _interval(fit, confidence, "design model: fold cells × crossed clips, Satterthwaite t")


def _interval(fit: DesignFit, confidence: float, method: str) -> Interval:
    se, dof = float(fit.se[0]), float(fit.dof[0])
    low, high = _t_bounds(float(fit.estimate[0]), se, dof, confidence)
    return Interval(estimate=float(fit.estimate[0]), low=low, high=high, se=se, method=method,
                    n_runs=fit.n_runs, n_clips=fit.n_clips, dof=dof, confidence=confidence,
                    n_cells=fit.n_cells, design=fit.design, note=ONE_RUN if fit.design == "one run" else "")


def _bootstrap_interval(
    cells: _Cells, estimate: float, confidence: float, n_boot: int, rng: np.random.Generator
) -> Interval:
    if n_boot < 100:
        raise UserError(f"n_boot must be at least 100, got {n_boot}")
    n_pass, n_clips = int(cells.pass_.max()) + 1, cells.n_clips
    if n_pass < 2:
        raise UserError("the bootstrap needs at least two passes (seed, repeat) to resample")
    total = np.zeros((n_pass, n_clips))
    count = np.zeros((n_pass, n_clips))
    np.add.at(total, (cells.pass_, cells.clip), cells.diff)
    np.add.at(count, (cells.pass_, cells.clip), 1.0)
    if count.max() > 1:
        raise UserError("a clip is scored by two folds of one (seed, repeat): not a k-fold layout")
    # Multinomial counts are the bootstrap weights of passes and clips; a replicate's mean is
    # Σ w_p v_c d_pc / Σ w_p v_c over the cells present.
    w = rng.multinomial(n_pass, np.full(n_pass, 1.0 / n_pass), size=n_boot).astype(float)
    v = rng.multinomial(n_clips, np.full(n_clips, 1.0 / n_clips), size=n_boot).astype(float)
    num = np.sum((w @ total) * v, axis=1)
    den = np.sum((w @ count) * v, axis=1)
    boot = num[den > 0] / den[den > 0]
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return Interval(
        estimate=estimate,
        low=float(low),
        high=float(high),
        se=float(np.std(boot, ddof=1)),
        method=f"two-level cluster bootstrap (passes × clips), percentile, {boot.size} replicates",
        n_runs=cells.n_runs,
        n_clips=n_clips,
        dof=math.nan,
        confidence=confidence,
    )


def _check_confidence(confidence: float) -> None:
    if not 0.5 < confidence < 1.0:
        raise UserError(f"confidence must lie in (0.5, 1), got {confidence}")


def _t_bounds(estimate: float, se: float, dof: float, confidence: float) -> tuple[float, float]:
    if math.isnan(se) or math.isnan(dof):
        return math.nan, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, dof)) * se if se > 0 else 0.0
    return estimate - half, estimate + half


def _t_two_sided_p(estimate: float, se: float, dof: float) -> float:
    if math.isnan(se):
        return math.nan
    if se == 0:
        return 1.0 if estimate == 0 else 0.0
    return float(2 * stats.t.sf(abs(estimate) / se, dof))


# --------------------------------------------------------------------------- tests


def corrected_resampled_t(
    diffs_per_fold: np.ndarray, n_train: int, n_test: int, confidence: float = 0.95
) -> dict:
    """Nadeau & Bengio's (2003) corrected resampled t-test over J = folds × repeats differences.

    The J differences share training data, so they are correlated (ρ ≈ n_test / (n_train +
    n_test) under N&B's model); the naive t-test's variance s²/J is inflated to (1/J +
    n_test/n_train) s², with J − 1 degrees of freedom (Bouckaert & Frank, 2004, for repeated
    k-fold). ``diffs_per_fold`` may be a (repeats, folds) array; it is flattened.
    """
    _check_confidence(confidence)
    d = np.asarray(diffs_per_fold, dtype=float).ravel()
    if d.size < 2 or np.isnan(d).any():
        raise UserError(f"corrected resampled t needs ≥ 2 finite differences, got {d.size}")
    if n_train <= 0 or n_test <= 0:
        raise UserError(f"n_train and n_test must be positive, got {n_train} and {n_test}")
    estimate = float(d.mean())
    se = math.sqrt((1.0 / d.size + n_test / n_train) * float(np.var(d, ddof=1)))
    dof = float(d.size - 1)
    low, high = _t_bounds(estimate, se, dof, confidence)
    return {
        "estimate": estimate,
        "low": low,
        "high": high,
        "p": _t_two_sided_p(estimate, se, dof),
        "dof": dof,
        "se": se,
    }


def _sign_flip_p(
    diffs: np.ndarray, alternative: str, n_resamples: int, rng: np.random.Generator | int
) -> float:
    d = np.asarray(diffs, dtype=float).ravel()
    if d.size == 0 or np.isnan(d).any():
        raise UserError(f"sign-flip test needs ≥ 1 finite difference, got {d.size}")
    if alternative not in _ALTERNATIVES:
        raise UserError(f"alternative must be one of {', '.join(_ALTERNATIVES)}, got {alternative!r}")
    if d.size > EXACT_SIGN_FLIP_MAX_N:
        result = stats.permutation_test(
            (d,),
            lambda x, axis: np.mean(x, axis=axis),
            permutation_type="samples",
            vectorized=True,
            n_resamples=n_resamples,
            alternative=alternative,
            rng=np.random.default_rng(rng),
        )
        return float(result.pvalue)
    # All 2^N sign patterns, as the N-fold sum ±d_1 ± … ± d_N (the sum orders patterns as the
    # mean does); same p-value as scipy.stats.permutation_test(n_resamples=inf), ~1000× faster.
    sums = np.zeros(1)
    for x in d:
        sums = np.concatenate((sums + x, sums - x))
    observed = float(d.sum())
    tol = 1e-9 * float(np.abs(d).sum())  # ties up to rounding count as "at least as extreme"
    if alternative == "greater":
        return float(np.mean(sums >= observed - tol))
    if alternative == "less":
        return float(np.mean(sums <= observed + tol))
    return float(np.mean(np.abs(sums) >= abs(observed) - tol))


def sign_flip_test(
    diffs: np.ndarray, *, n_resamples: int = 99_999, rng: np.random.Generator | int = 0
) -> float:
    """Two-sided sign-flip permutation p-value of the mean paired difference over N seeds.

    Exact for N ≤ 20 (all 2^N sign patterns: p = share of patterns whose |mean| ≥ the observed
    |mean|, ties included); beyond, Monte Carlo via scipy.stats.permutation_test. Always finite:
    all differences zero gives 1.0, N equal nonzero differences give 2 / 2^N.
    """
    return _sign_flip_p(diffs, "two-sided", n_resamples, rng)


def tost(estimate: float, se: float, dof: float, margin: float, alpha: float = 0.05) -> float:
    """Two one-sided tests (Schuirmann) for equivalence within (−margin, margin), in pp.

    Returns max(p of H0: δ ≤ −margin, p of H0: δ ≥ margin) on a t(dof) reference. Rejecting
    both at level α (p < α) is the same as the (1 − 2α) t-interval lying inside (−margin,
    margin). ``alpha`` does not change the p-value; it is checked (0 < α < 0.5) so the call
    states the level the caller compares against.
    """
    if not margin > 0:
        raise UserError(f"equivalence margin must be positive, got {margin}")
    if not 0 < alpha < 0.5:
        raise UserError(f"alpha must lie in (0, 0.5), got {alpha}")
    if se == 0:
        return 0.0 if abs(estimate) < margin else 1.0
    p_above_lower = stats.t.sf((estimate + margin) / se, dof)
    p_below_upper = stats.t.cdf((estimate - margin) / se, dof)
    return float(max(p_above_lower, p_below_upper))


def verdict(
    interval_low: float,
    interval_high: float,
    margin: float,
    equivalence_interval: tuple[float, float] | None = None,
) -> str:
    """'better' / 'worse' / 'equivalent' / 'inconclusive' for a difference mode − reference.

    Rule, at level α, given the (1 − α) two-sided interval [low, high] and the (1 − 2α) interval
    ``equivalence_interval`` (the one TOST at level α corresponds to):
      1. 'better' if low > 0, 'worse' if high < 0 (the two-sided test at level α rejects δ = 0);
      2. else 'equivalent' if the (1 − 2α) interval lies strictly inside (−margin, margin)
         (TOST rejects |δ| ≥ margin at level α);
      3. else 'inconclusive'.
    A difference that is significant yet within the margin is reported as better/worse (its
    TOST p-value still says it is small). Without ``equivalence_interval`` the (1 − α) interval
    is used for both, i.e. TOST at level α/2 (conservative). NaN bounds give 'inconclusive'.
    """
    if not margin > 0:
        raise UserError(f"equivalence margin must be positive, got {margin}")
    eq_low, eq_high = equivalence_interval or (interval_low, interval_high)
    if any(math.isnan(v) for v in (interval_low, interval_high, eq_low, eq_high)):
        return "inconclusive"
    if interval_low > 0:
        return "better"
    if interval_high < 0:
        return "worse"
    if -margin < eq_low and eq_high < margin:
        return "equivalent"
    return "inconclusive"




def _judge_row(fit: DesignFit, mode: str, reference: str, margin: float, confidence: float) -> dict:
    """One comparison's row from its ``design_variance`` fit: interval, tests (unadjusted), MDD."""
    alpha = 1.0 - confidence
    iv = _interval(fit, confidence, "design model")
    eq_low, eq_high = _t_bounds(iv.estimate, iv.se, iv.dof, 1.0 - 2 * alpha)
    no_interval = math.isnan(iv.se)
    return {
        "mode": mode,
        "reference": reference,
        "estimate": iv.estimate,
        "low": iv.low,
        "high": iv.high,
        "se": iv.se,
        "dof": iv.dof,
        "p_different": _t_two_sided_p(iv.estimate, iv.se, iv.dof),
        "equivalence_low": eq_low,
        "equivalence_high": eq_high,
        "margin": margin,
        "p_equivalent": math.nan if no_interval else tost(iv.estimate, iv.se, iv.dof, margin, alpha),
        "mdd": minimal_detectable_difference(iv.se, iv.dof, alpha),
        "n_runs": iv.n_runs,
        "n_cells": iv.n_cells,
        "n_clips": iv.n_clips,
        "design": iv.design,
        "sd_clip_effect": math.sqrt(max(float(fit.var_clip[0]), 0.0)) if not math.isnan(fit.var_clip[0])
        else math.nan,
        "note": iv.note,
        "confidence": confidence,
    }


def _family(rows: list[dict], confidence: float) -> pd.DataFrame:
    """The comparisons as one family: Holm over every 'different' and every 'equivalent' claim."""
    table = pd.DataFrame(rows)
    m = len(table)
    family = [table["p_different"].to_numpy(float), table["p_equivalent"].to_numpy(float)]
    adjusted = holm(np.concatenate(family))
    table["p_different_holm"], table["p_equivalent_holm"] = adjusted[:m], adjusted[m:]
    table["verdict"] = _verdict_rule(table["estimate"], table["p_different_holm"], table["p_equivalent_holm"],
                                     1.0 - confidence)
    return table


def judge(clips: pd.DataFrame, mode: str, reference: str, margin: float, confidence: float = 0.95) -> dict:
    """Difference, interval, tests and verdict of ``mode`` against ``reference`` (all in pp).

    The family is this comparison's two claims (``judge_all`` with one mode): ``p_different`` is
    the two-sided t-test of δ = 0 on the design model's (estimate, se, dof), so p < α exactly when
    the interval excludes 0; ``p_equivalent`` is TOST against ``margin`` (p < α exactly when the
    (1 − 2α) interval [equivalence_low, equivalence_high] lies inside (−margin, margin)); the
    verdict applies the rule to their Holm-adjusted values.
    """
    return judge_all(clips, reference, margin, confidence, modes=[mode]).iloc[0].to_dict()


def judge_all(
    clips: pd.DataFrame,
    reference: str,
    margin: float,
    confidence: float = 0.95,
    modes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """``judge`` for every non-reference mode as ONE family.

    Holm adjusts the 2M p-values together (each mode's 'different' and 'equivalent' claim), so
    the chance of any false claim, of either kind, is at most α. ``verdict``: better / worse if
    p_different_holm < α, else equivalent if p_equivalent_holm < α, else inconclusive. A mode
    with one paired run gets no interval, NaN p-values (outside the family) and the note
    "one run: no interval".
    """
    return _judge_modes(clips, reference, margin, confidence, modes,
                        lambda m: _paired_cells(clips, m, reference))


def _judge_modes(clips: pd.DataFrame, reference: str, margin: float, confidence: float,
                 modes: Sequence[str] | None, cells: Callable[[str], pd.DataFrame]) -> pd.DataFrame:
    """What ``judge_all`` and ``judge_interactions`` share: the checks, then one ``_judge_row`` per
    mode of its paired cells (``cells(mode)``), Holm over all of them as one family."""
    _check_confidence(confidence)
    if not margin > 0:
        raise UserError(f"equivalence margin must be positive, got {margin}")
    if modes is None:
        modes = [m for m in pd.unique(clips["mode"]) if m != reference]
    if not len(modes):
        raise UserError(f"no mode besides the reference {reference} to judge")
    return _family([_judge_row(_fit(cells(m)), m, reference, margin, confidence) for m in modes], confidence)


def _interaction_cells(clips: pd.DataFrame, mode: str, reference: str, recipe_a: str,
                       recipe_b: str) -> _Cells:
    """The (run, clip) cells scored by all four arms (``mode``, ``reference``) x (``recipe_a``,
    ``recipe_b``), with d = (mode − reference under B) − (mode − reference under A), in pp.

    The recipes of one run (seed, repeat, fold) train on the same fold cell from the same seed, so
    d keeps the design of a plain difference (``design_variance``): clips crossed with runs, seeds
    nested in fold cells; only its scale (−200 .. 200) differs.
    """
    _check_clip_table(clips)
    require_table(clips, ("recipe",), "clip table", "no predictions to compare")
    if mode == reference or recipe_a == recipe_b:
        raise UserError(f"interaction of {mode} vs {reference} between {recipe_a} and {recipe_b}: "
                        "the modes and the recipes must differ")
    arms = [(recipe_b, mode), (recipe_b, reference), (recipe_a, mode), (recipe_a, reference)]
    sub = clips.loc[clips["recipe"].isin([recipe_a, recipe_b]) & clips["mode"].isin([mode, reference])]
    present = set(zip(sub["recipe"], sub["mode"], strict=True))
    for recipe, name in arms:
        if (recipe, name) not in present:
            raise UserError(f"mode {name} has no clip predictions under recipe {recipe}")
    index = [*RUN_KEYS, "clip_id"]
    twice = sub.duplicated(["recipe", "mode", *index])
    if twice.any():
        row = sub[twice].iloc[0]
        raise UserError(f"clip {row['clip_id']} is scored twice by mode {row['mode']} under recipe "
                        f"{row['recipe']} in run (seed {row['seed']}, repeat {row['repeat']}, "
                        f"fold {row['fold']})")
    wide = sub.assign(correct=pd.to_numeric(sub["correct"]).astype(float)).pivot(
        index=index, columns=["recipe", "mode"], values="correct")
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(arms)).dropna()
    if wide.empty:
        raise UserError(f"recipes {recipe_a} and {recipe_b} x modes {mode} and {reference} share no "
                        "(seed, repeat, fold, clip) cell")
    y = wide.to_numpy(dtype=float)
    keys = wide.index.to_frame(index=False)
    return _Cells(diff=100.0 * ((y[:, 0] - y[:, 1]) - (y[:, 2] - y[:, 3])),
                  seed=_codes(keys, ["seed"]), repeat=_codes(keys, ["repeat"]), fold=_codes(keys, ["fold"]),
                  clip=_codes(keys, ["clip_id"]), pass_=_codes(keys, PASS_KEYS))


def judge_interactions(
    clips: pd.DataFrame,
    reference: str,
    recipe_a: str,
    recipe_b: str,
    margin: float,
    confidence: float = 0.95,
    modes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The mode x recipe interaction of every mode against ``reference`` as ONE family: for each
    mode, (mode − reference under ``recipe_b``) − (mode − reference under ``recipe_a``), paired on
    (seed, repeat, fold, clip), with the same interval, tests, Holm family and verdicts as
    ``judge_all`` ("better": the mode gains more against the reference under B than under A)."""
    table = _judge_modes(clips, reference, margin, confidence, modes,
                         lambda m: _interaction_cells(clips, m, reference, recipe_a, recipe_b))
    table.insert(0, "recipe_b", recipe_b)
    table.insert(0, "recipe_a", recipe_a)
    return table


def run_differences(runs: pd.DataFrame, mode: str, reference: str, column: str = "test_acc") -> pd.Series:
    """Paired differences mode − reference of a per-run table, indexed by (seed, repeat, fold).

    Missing ``repeat`` / ``fold`` columns (a fixed split, the original's CSV) count as 0.
    """
    for col in ("freeze_mode", "seed", column):
        if col not in runs.columns:
            raise UserError(f"per-run table lacks column {col}")
    table = runs.assign(**{k: runs[k] if k in runs.columns else 0 for k in ("repeat", "fold")})
    table[["repeat", "fold"]] = table[["repeat", "fold"]].fillna(0)
    keys = ["freeze_mode", *RUN_KEYS]
    dup = table.duplicated(keys)
    if dup.any():
        row = table[dup].iloc[0]
        raise UserError(f"per-run table has two rows for mode {row['freeze_mode']}, seed {row['seed']}, "
                        f"repeat {row['repeat']}, fold {row['fold']}")
    wide = table.pivot_table(index=RUN_KEYS, columns="freeze_mode", values=column, aggfunc="first")
    for name in (mode, reference):
        if name not in wide.columns:
            raise UserError(f"mode {name} is absent from the per-run table")
    return (wide[mode] - wide[reference]).dropna().astype(float)


def run_level_fit(diffs: pd.Series) -> DesignFit:
    """``design_variance`` on per-run differences (index seed, repeat, fold), each run one unit.

    Per-run accuracies average their clips, so the clip effect cannot be separated: each run is
    given one pseudo-clip of its own cell (clip variance not identified; equal weights). For
    k-fold the cell means still carry clip, cell and seed noise; for one fixed split the interval
    is the paired t over runs, conditional on the test clips.
    """
    frame = diffs.rename("diff").reset_index()
    seed, repeat, fold = (_codes(frame, [k]) for k in RUN_KEYS)
    s, r, k = int(seed.max()) + 1, int(repeat.max()) + 1, int(fold.max()) + 1
    clip = repeat * k + fold
    diff, mask = np.zeros((1, s, r, r * k)), np.zeros((1, s, r, r * k))
    diff[0, seed, repeat, clip] = frame["diff"].to_numpy(float)
    mask[0, seed, repeat, clip] = 1.0
    folds = np.full((1, r, r * k), -1)
    folds[0, repeat, clip] = fold
    fit = design_variance(diff, folds, mask)
    nan = np.full(1, np.nan)
    return DesignFit(fit.estimate, fit.se, fit.dof, nan, fit.var_pass, fit.var_seed_cell, fit.design,
                     fit.n_runs, fit.n_cells, 0, fit.n_passes, fit.folds, fit.seeds_per_cell, fit.floor_dof)


def judge_runs(runs: pd.DataFrame, reference: str, margin: float, confidence: float = 0.95,
               modes: Sequence[str] | None = None, column: str = "test_acc") -> pd.DataFrame:
    """``judge_all`` from a per-run table (no per-clip predictions): the same model at run level."""
    _check_confidence(confidence)
    if modes is None:
        modes = [m for m in pd.unique(runs["freeze_mode"]) if m != reference]
    if not len(modes):
        raise UserError(f"no mode besides the reference {reference} to judge")
    rows = []
    for mode in modes:
        diffs = run_differences(runs, mode, reference, column)
        if diffs.empty:
            raise UserError(f"{mode} vs {reference}: no paired run")
        rows.append(_judge_row(run_level_fit(diffs), mode, reference, margin, confidence))
    return _family(rows, confidence)
def compare_scores(runs: pd.DataFrame, reference: str, column: str, confidence: float = 0.95,
                   modes: Sequence[str] | None = None) -> pd.DataFrame:
    """Difference ``mode − reference`` of a per-run score ``column`` (any unit), every mode at once.

    The accuracy table's paired design at run level (``run_differences``, ``run_level_fit``): pairs
    on (seed, repeat, fold), fold cells as the independent units of k-fold, the paired t over runs
    on one split. For scores that are no mean over clips (macro-F1, calibration error) the run is
    the smallest unit they exist for. Holm adjusts the modes' two-sided p-values together
    (``p_different_holm``); there is no equivalence claim, as the margin is in accuracy points. A
    mode with one paired run gets no interval and the note "one run: no interval".
    """
    _check_confidence(confidence)
    if modes is None:
        modes = [m for m in pd.unique(runs["freeze_mode"]) if m != reference]
    rows = []
    for mode in modes:
        diffs = run_differences(runs, mode, reference, column)
        if diffs.empty:
            continue
        iv = _interval(run_level_fit(diffs), confidence, "design model, run level")
        rows.append({"mode": mode, "reference": reference, "estimate": iv.estimate, "low": iv.low,
                     "high": iv.high, "se": iv.se, "dof": iv.dof,
                     "p_different": _t_two_sided_p(iv.estimate, iv.se, iv.dof), "n_runs": iv.n_runs,
                     "n_cells": iv.n_cells, "design": iv.design, "note": iv.note})
    table = pd.DataFrame(rows, columns=["mode", "reference", "estimate", "low", "high", "se", "dof",
                                        "p_different", "n_runs", "n_cells", "design", "note"])
    table["p_different_holm"] = holm(table["p_different"].to_numpy(float)) if len(table) else []
    return table


def joint_contrast(
    first: np.ndarray,
    second: np.ndarray,
    alternatives: tuple[str, str] = ("less", "greater"),
    method: str = "t",
) -> dict:
    """Intersection-union test that two one-sided paired effects hold together (Berger, 1982).

    Defaults encode the original's headline pattern: ``first`` = per-seed (or per-run)
    differences freeze_patch − freeze_none, expected < 0, and ``second`` = freeze_patch_0_5 −
    freeze_patch, expected > 0. H0: at least one fails; p = max of the two one-sided p-values,
    a level-α test with no multiplicity correction. ``method``: 't' (one-sample t) or
    'sign_flip' (exact one-sided sign-flip permutation).
    """
    if method not in ("t", "sign_flip"):
        raise UserError(f"joint_contrast method must be 't' or 'sign_flip', got {method!r}")
    out: dict = {}
    for name, diffs, alternative in zip(("first", "second"), (first, second), alternatives, strict=True):
        d = np.asarray(diffs, dtype=float).ravel()
        if alternative not in ("less", "greater"):
            raise UserError(f"joint_contrast alternatives must be 'less' or 'greater', got {alternative!r}")
        if method == "t":
            p = _one_sided_t(d, alternative)
        else:
            p = _sign_flip_p(d, alternative, n_resamples=99_999, rng=0)
        out[f"estimate_{name}"] = float(d.mean())
        out[f"p_{name}"] = p
    out["p"] = max(out["p_first"], out["p_second"])
    return out


def _one_sided_t(d: np.ndarray, alternative: str) -> float:
    if d.size < 2 or np.isnan(d).any():
        raise UserError(f"one-sided t-test needs ≥ 2 finite differences, got {d.size}")
    if np.ptp(d) == 0:  # zero spread: t is undefined; the exact sign-flip p-value (1/2^N or 1) is not
        return _sign_flip_p(d, alternative, n_resamples=99_999, rng=0)
    return float(stats.ttest_1samp(d, 0.0, alternative=alternative).pvalue)


# --------------------------------------------------------------------------- planning


def _components(fit: DesignFit, source: str) -> dict:
    """The plan's inputs from a fit: clip variance σ_b², training variance of one pass at one seed
    per cell (cells design: one repeat of K cells; runs design: one run), the design's shape."""
    var_pass = float(fit.var_pass[0])
    seed = float(fit.var_seed_cell[0])
    if fit.design == "cells" and fit.seeds_per_cell > 1 and not math.isnan(seed):
        # a repeat mean with S seeds per cell holds seed noise var_seed / (K S); one seed: var_seed / K
        var_pass += seed / fit.folds * (1.0 - 1.0 / fit.seeds_per_cell)
    var_clip = float(fit.var_clip[0])
    return {
        "estimate": float(fit.estimate[0]),
        "se": float(fit.se[0]),
        "dof": float(fit.dof[0]),
        "design": fit.design,
        "folds": fit.folds,
        "n_runs": fit.n_runs,
        "n_cells": fit.n_cells,
        "n_clips": fit.n_clips,
        "seeds_per_cell": fit.seeds_per_cell,
        "var_clip": var_clip,
        "sd_clip_effect": math.sqrt(max(var_clip, 0.0)) if not math.isnan(var_clip) else math.nan,
        "var_pass": var_pass,
        "sd_run": math.sqrt(var_pass) if fit.design == "runs" else math.nan,
        "source": source,
    }


def variance_components(clips: pd.DataFrame, mode: str, reference: str) -> dict:
    """What a plan needs, measured from per-clip predictions (see ``plan``)."""
    fit = _fit(_paired_cells(clips, mode, reference))
    if fit.design == "one run":
        raise UserError(f"{mode} vs {reference}: one paired run only; a plan needs the run-to-run variance")
    return _components(fit, "per-clip predictions")


def components_from_seed_csv(runs: pd.DataFrame, mode: str, reference: str, column: str = "test_acc") -> dict:
    """What a plan needs, from a per-run results table (the original's CSV or freezing_runs.csv).

    Runs are keyed by (seed, repeat, fold) (absent columns: a fixed split). A run's accuracy
    averages its clips, so clip and run noise cannot be separated: ``var_clip`` is NaN and the
    plan has no clip floor (it says so). For a fixed split ``sd_run`` is the sd of the per-seed
    paired differences.
    """
    for col in ("model", "recipe"):
        if col in runs.columns and runs[col].nunique() > 1:
            raise UserError(f"per-run table mixes several {col} values; select one first")
    diffs = run_differences(runs, mode, reference, column)
    if len(diffs) < 2:
        raise UserError(f"{mode} vs {reference}: fewer than two paired runs")
    return _components(run_level_fit(diffs), "per-run accuracies (clip and run noise not separable)")


def minimal_detectable_difference(se: float, dof: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true difference (pp) the two-sided level-α t-test detects with ``power``:
    (t_{1−α/2, ν} + t_{power, ν}) · se, for a design whose mean difference has standard error
    ``se`` on ν = ``dof`` degrees of freedom (NaN without an se)."""
    _check_power(alpha, power)
    if math.isnan(se) or math.isnan(dof):
        return math.nan
    return float((stats.t.ppf(1 - alpha / 2, dof) + stats.t.ppf(power, dof)) * se)


def _check_power(alpha: float, power: float) -> None:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise UserError(f"alpha and power must lie in (0, 1), got {alpha} and {power}")


def plan(
    effect: float,
    components: Mapping[str, float],
    alpha: float = 0.05,
    power: float = 0.8,
    *,
    margin: float | None = None,
    max_passes: int = 100_000,
) -> dict:
    """Fewest runs (and cells) to detect ``effect`` pp, and to show equivalence at ``margin``.

    Var(mean) with P passes = σ_b²/N + var_pass/P: a pass is one repeat of the K fold cells with
    one seed per cell (the cheapest way to add independent training sets: more seeds in a cell
    shrink only the seed part) or, for one fixed split, one run. Degrees of freedom P(K − 1)
    (cells) or P − 1 (runs). Difference: (t_{1−α/2} + t_{power}) · se ≤ |effect|. Equivalence at
    a true difference of 0: (t_{1−α} + t_{(1+power)/2}) · se ≤ margin (TOST). The clip term
    σ_b²/N does not shrink with runs: ``floor_different`` / ``floor_equivalent`` are the
    smallest effect / margin any number of runs reaches on these N clips; beyond, a plan is
    None: add clips (a larger or second dataset). Levels are per comparison (no multiplicity).
    """
    _check_power(alpha, power)
    var_clip = float(components.get("var_clip", math.nan))
    n_clips = max(int(components.get("n_clips", 0) or 0), 1)
    clip_term = 0.0 if math.isnan(var_clip) else max(var_clip, 0.0) / n_clips
    folds = int(components.get("folds", 1))
    cells = components.get("design") == "cells"
    passes = np.arange(1 if cells else 2, max_passes + 1)
    dof = passes * (folds - 1) if cells else passes - 1
    se = np.sqrt(clip_term + float(components["var_pass"]) / passes)
    out: dict = {"effect": float(effect), "margin": margin, "alpha": alpha, "power": power,
                 "design": components.get("design"), "folds": folds,
                 "n_clips": int(components.get("n_clips", 0)),
                 "clip_identified": not math.isnan(var_clip)}
    claims = {"different": (abs(effect), stats.t.ppf(1 - alpha / 2, dof) + stats.t.ppf(power, dof),
                            stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power))}
    if margin is not None:
        claims["equivalent"] = (margin, stats.t.ppf(1 - alpha, dof) + stats.t.ppf((1 + power) / 2, dof),
                                stats.norm.ppf(1 - alpha) + stats.norm.ppf((1 + power) / 2))
    for claim, (target, factor, z) in claims.items():
        enough = np.flatnonzero(factor * se <= target)
        p = int(passes[enough[0]]) if enough.size else None
        out[f"passes_{claim}"] = p
        out[f"runs_{claim}"] = None if p is None else p * folds
        out[f"cells_{claim}"] = None if p is None else (p * folds if cells else 1)
        out[f"floor_{claim}"] = float(z * math.sqrt(clip_term))
    return out


def holm(pvalues: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjustment; NaN entries stay NaN and do not count towards m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    m = len(order)
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adjusted)
    return out


# --------------------------------------------------------------------------- validation vs test


def val_test_agreement(
    summary_val: Mapping[str, float], summary_test: Mapping[str, float], reference: str
) -> dict:
    """Do validation and test rank the modes' effects (mode − reference) the same way?

    ``summary_val`` / ``summary_test``: mean accuracy per mode. Returns both effect maps, the
    Spearman correlation of the effects over the modes in both (NaN below three modes) and the
    modes whose effect has opposite signs on validation and test.
    """
    for name, summary in (("validation", summary_val), ("test", summary_test)):
        if reference not in summary:
            raise UserError(f"reference mode {reference} is absent from the {name} summary")
    modes = [m for m in summary_val if m in summary_test and m != reference]
    val = {m: float(summary_val[m]) - float(summary_val[reference]) for m in modes}
    test = {m: float(summary_test[m]) - float(summary_test[reference]) for m in modes}
    rho, p = math.nan, math.nan
    if len(modes) >= 3:
        result = stats.spearmanr([val[m] for m in modes], [test[m] for m in modes])
        rho, p = float(result.statistic), float(result.pvalue)
    return {
        "spearman": rho,
        "spearman_p": p,
        "n_modes": len(modes),
        "val_effects": val,
        "test_effects": test,
        "sign_flips": [m for m in modes if val[m] * test[m] < 0],
    }

"""Inference on per-clip predictions: mode − reference intervals, tests, verdicts and run planning."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import UserError, require_table

CLIP_COLUMNS = ("mode", "seed", "fold", "repeat", "clip_id", "correct")
RUN_KEYS = ["seed", "fold", "repeat"]  # one training run per (mode, seed, fold, repeat)
PASS_KEYS = ["seed", "repeat"]  # one pass over the clips: every fold of a repeat, for one seed
EXACT_SIGN_FLIP_MAX_N = 20
METHODS = ("moments", "bootstrap")
_ALTERNATIVES = ("two-sided", "less", "greater")


@dataclass(frozen=True)
class Interval:
    """Accuracy difference mode − reference in percentage points, with a two-sided interval.

    ``dof`` is the t reference distribution's degrees of freedom (``nan`` for the bootstrap's
    percentile interval); ``n_runs`` counts the paired runs (seed, fold, repeat) and ``n_clips``
    the distinct clips.
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


@dataclass(frozen=True)
class _Cells:
    """Paired cells (one per run and clip evaluated under both modes)."""

    diff: np.ndarray  # correct[mode] − correct[reference], in percentage points (−100, 0, 100)
    run: np.ndarray  # run code, one per (seed, fold, repeat)
    clip: np.ndarray  # clip code
    pass_: np.ndarray  # pass code, one per (seed, repeat)

    @property
    def n_runs(self) -> int:
        return int(self.run.max()) + 1

    @property
    def n_clips(self) -> int:
        return int(self.clip.max()) + 1


@dataclass(frozen=True)
class _Components:
    """Method-of-moments variance components of the paired difference, in pp²."""

    run: float  # between-run variance of a run's true difference
    clip: float  # between-clip variance of a clip's true difference (0 when not identified)
    residual: float  # run × clip interaction plus the 0/1 outcome noise
    clip_identified: bool  # False when no clip was scored by two runs (one pass of k-fold)
    se: float
    dof: float


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
                f"(seed {row['seed']}, fold {row['fold']}, repeat {row['repeat']})"
            )
    _, at_mode, at_ref = np.intersect1d(
        cell[is_mode], cell[~is_mode], assume_unique=True, return_indices=True
    )
    if at_mode.size == 0:
        raise UserError(f"modes {mode} and {reference} share no (seed, fold, repeat, clip) cell")

    def paired(codes: np.ndarray) -> np.ndarray:
        return np.unique(codes[is_mode][at_mode], return_inverse=True)[1]

    cells = _Cells(
        diff=100.0 * (correct[is_mode][at_mode] - correct[~is_mode][at_ref]),
        run=paired(run),
        clip=paired(clip),
        pass_=paired(_codes(sub, PASS_KEYS)),
    )
    if cells.n_runs < 2:
        raise UserError(
            f"{mode} vs {reference}: one paired run only; the run-to-run variance needs at least two"
        )
    return cells


# --------------------------------------------------------------------------- variance components


def _within(diff: np.ndarray, group: np.ndarray) -> tuple[float, float, float]:
    """For one grouping: Σ (d_i − d_j)² over unordered pairs within a group (= Σ_g n_g SS_g), the
    number of ordered within-group pairs Σ n_g(n_g − 1), and Σ n_g²."""
    counts = np.bincount(group).astype(float)
    means = np.bincount(group, weights=diff) / counts
    sq_dev = np.bincount(group, weights=(diff - means[group]) ** 2)
    return float(np.sum(counts * sq_dev)), float(np.sum(counts * (counts - 1))), float(np.sum(counts**2))


def _components(cells: _Cells) -> _Components:
    """Moment estimates for the crossed model d = μ + a_run + b_clip + e (Gao & Owen, 2017).

    Two cells of the same run have E(d_i − d_j)² = 2(σ_b² + σ_e²), two of the same clip
    2(σ_a² + σ_e²), two sharing neither 2(σ_a² + σ_b² + σ_e²); the sums of (d_i − d_j)² over
    same-run pairs, same-clip pairs and all pairs give three linear equations. For a balanced
    runs × clips table the solution is the two-way ANOVA estimator. The se uses the solution as
    is; the components returned are truncated at 0.
    """
    d = cells.diff
    n = float(d.size)
    u_run, pairs_run, sq_run = _within(d, cells.run)
    u_clip, pairs_clip, sq_clip = _within(d, cells.clip)
    u_all = n * float(np.sum((d - d.mean()) ** 2))
    if pairs_run == 0:
        raise UserError("every run scored a single clip: the clip-level variance is not estimable")
    clip_identified = pairs_clip > 0
    if clip_identified:
        system = np.array(
            [
                [0.0, pairs_run, pairs_run],
                [pairs_clip, 0.0, pairs_clip],
                [n * n - sq_run, n * n - sq_clip, n * n - n],
            ]
        )
        var_run, var_clip, var_res = np.linalg.solve(system, [u_run, u_clip, u_all])
    else:  # each clip seen by one run (one pass of k-fold): clip effect and residual coincide
        var_clip, var_res = 0.0, u_run / pairs_run
        var_run = (u_all - var_res * (n * n - n)) / (n * n - sq_run)
    # Var(mean) = σ_a² Σn_r²/n² + σ_b² Σn_c²/n² + σ_e²/n from the UNtruncated estimates (unbiased;
    # truncating would make the interval conservative), with Satterthwaite's degrees of freedom
    # for the balanced-ANOVA form (MS_run + MS_clip − MS_e) / (RC): run_term + e and clip_term + e
    # carry R − 1 and C − 1 degrees of freedom, e alone the interaction's.
    run_term, clip_term, e_term = var_run * sq_run / n**2, var_clip * sq_clip / n**2, var_res / n
    n_runs, n_clips = cells.n_runs, cells.n_clips
    if clip_identified:
        parts = np.array([run_term + e_term, clip_term + e_term, e_term])
        dofs = np.array([n_runs - 1, n_clips - 1, max(n - n_runs - n_clips + 1, 1.0)])
    else:
        parts = np.array([run_term + e_term, 0.0, 0.0])
        dofs = np.array([n_runs - 1, 1.0, 1.0])
    variance = float(parts[0] + parts[1] - parts[2])
    if variance <= 0:  # sampling noise made the combination non-positive: keep the larger part
        variance = float(max(parts[0], parts[1], 0.0))
    denom = float(np.sum(parts**2 / dofs))
    dof = variance**2 / denom if denom > 0 else math.inf
    var_run, var_clip, var_res = (max(0.0, float(v)) for v in (var_run, var_clip, var_res))
    return _Components(var_run, var_clip, var_res, clip_identified, math.sqrt(variance), dof)


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
    where a run is (seed, fold, repeat) and both modes score the same clips in it. The estimate is
    the mean of d over all paired cells (for k-fold, every clip once per seed and repeat).

    Model and assumptions: d = μ + a_run + b_clip + e. Runs are exchangeable and independent (a
    run's effect a does not carry over to other runs of the same seed); clips are an exchangeable
    sample from the population of clips (b); runs and clips are crossed (every clip is scored by
    several runs: with a single split by every seed, with k-fold once per (seed, repeat)); e is
    the run × clip interaction plus the 0/1 outcome noise. The interval targets μ, the expected
    difference over new training runs on new clips.

    ``method="moments"`` (default): the variance components are method-of-moments (pairwise
    U-statistic) estimates, valid for balanced and unbalanced layouts; se² = σ_a² Σn_r²/n² +
    σ_b² Σn_c²/n² + σ_e²/n, and the interval is a t-interval with Satterthwaite's degrees of
    freedom. With one pass of k-fold (no clip scored twice) σ_b and σ_e are not separable and are
    pooled, which is then exact for the variance of the mean.

    ``method="bootstrap"``: the two-level (pigeonhole) cluster bootstrap: resample passes (seed,
    repeat, carrying their folds' runs) and clip ids, each with replacement, ``n_boot`` times;
    percentile interval. No resampling scheme is unbiased for a crossed layout (McCullagh, 2000):
    this one counts σ_e about three times (Owen, 2007), so it is conservative when the 0/1 noise
    dominates, as it does for per-clip accuracy; it is kept as a cross-check. ``n_boot`` and
    ``rng`` only matter here.
    """
    _check_confidence(confidence)
    if method not in METHODS:
        raise UserError(f"unknown interval method {method!r}; choose one of {', '.join(METHODS)}")
    cells = _paired_cells(clips, mode, reference)
    estimate = float(cells.diff.mean())
    if method == "bootstrap":
        return _bootstrap_interval(cells, estimate, confidence, n_boot, np.random.default_rng(rng))
    comp = _components(cells)
    low, high = _t_bounds(estimate, comp.se, comp.dof, confidence)
    return Interval(
        estimate=estimate,
        low=low,
        high=high,
        se=comp.se,
        method="crossed random effects, moment estimates, Satterthwaite t",
        n_runs=cells.n_runs,
        n_clips=cells.n_clips,
        dof=comp.dof,
        confidence=confidence,
    )


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
    half = float(stats.t.ppf((1 + confidence) / 2, dof)) * se if se > 0 else 0.0
    return estimate - half, estimate + half


def _t_two_sided_p(estimate: float, se: float, dof: float) -> float:
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


def judge(clips: pd.DataFrame, mode: str, reference: str, margin: float, confidence: float = 0.95) -> dict:
    """Difference, interval, tests and verdict of ``mode`` against ``reference`` (all in pp).

    Uses the moment interval of ``difference_interval``; with α = 1 − confidence, ``p`` is the
    two-sided t-test of δ = 0 on (estimate, se, dof), so p < α exactly when the interval excludes
    0; ``p_equivalence`` is TOST against ``margin``, so p_equivalence < α exactly when the
    (1 − 2α) interval [equivalence_low, equivalence_high] lies inside (−margin, margin).
    """
    iv = difference_interval(clips, mode, reference, confidence)
    alpha = 1.0 - confidence
    eq_low, eq_high = _t_bounds(iv.estimate, iv.se, iv.dof, 1.0 - 2 * alpha)
    return {
        "mode": mode,
        "reference": reference,
        "estimate": iv.estimate,
        "low": iv.low,
        "high": iv.high,
        "se": iv.se,
        "dof": iv.dof,
        "p": _t_two_sided_p(iv.estimate, iv.se, iv.dof),
        "equivalence_low": eq_low,
        "equivalence_high": eq_high,
        "margin": margin,
        "p_equivalence": tost(iv.estimate, iv.se, iv.dof, margin, alpha),
        "verdict": verdict(iv.low, iv.high, margin, (eq_low, eq_high)),
        "n_runs": iv.n_runs,
        "n_clips": iv.n_clips,
        "confidence": confidence,
    }


def judge_all(
    clips: pd.DataFrame,
    reference: str,
    margin: float,
    confidence: float = 0.95,
    modes: Sequence[str] | None = None,
) -> pd.DataFrame:
    """``judge`` for every non-reference mode, plus Holm-adjusted p-values across those modes.

    ``verdict`` is per comparison (as ``judge``); ``verdict_holm`` applies the same rule to the
    Holm-adjusted p-values (better/worse if p_holm < α, else equivalent if p_equivalence_holm < α),
    controlling the family-wise error over the modes.
    """
    if modes is None:
        modes = [m for m in pd.unique(clips["mode"]) if m != reference]
    table = pd.DataFrame([judge(clips, m, reference, margin, confidence) for m in modes])
    if table.empty:
        raise UserError(f"no mode besides the reference {reference} to judge")
    alpha = 1.0 - confidence
    table["p_holm"] = holm(table["p"].to_numpy())
    table["p_equivalence_holm"] = holm(table["p_equivalence"].to_numpy())
    table["verdict_holm"] = [
        ("better" if est > 0 else "worse")
        if p < alpha
        else ("equivalent" if p_eq < alpha else "inconclusive")
        for est, p, p_eq in zip(table["estimate"], table["p_holm"], table["p_equivalence_holm"], strict=True)
    ]
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


def variance_components(clips: pd.DataFrame, mode: str, reference: str) -> dict:
    """Variance components of the paired difference mode − reference, as sds in pp.

    ``sd_run``: between-run sd of a run's true difference (σ_a); ``sd_clip``: per-clip, per-run
    residual sd (σ_e: run × clip interaction and 0/1 noise); ``sd_clip_effect``: between-clip sd
    of a clip's true difference (σ_b; 0 and pooled into sd_clip when not identifiable, i.e. no
    clip scored by two runs). Method-of-moments estimates, see ``difference_interval``.
    """
    cells = _paired_cells(clips, mode, reference)
    comp = _components(cells)
    per_run = np.bincount(cells.run)
    return {
        "estimate": float(cells.diff.mean()),
        "sd_run": math.sqrt(comp.run),
        "sd_clip": math.sqrt(comp.residual),
        "sd_clip_effect": math.sqrt(comp.clip),
        "n_runs": cells.n_runs,
        "n_clips_per_run": float(np.median(per_run)),
        "n_clips": cells.n_clips,
        "source": "per-clip predictions (moment estimates)",
    }


def components_from_seed_csv(runs: pd.DataFrame, mode: str, reference: str, column: str = "test_acc") -> dict:
    """Variance components from a per-seed results table (the original's CSV format).

    ``sd_run`` is the sd (ddof=1) of the per-seed paired differences of ``column``. A per-seed
    accuracy already averages its test clips, so this table cannot separate clip from run noise:
    the sd is the TOTAL per-run sd and is used as sd_run, with sd_clip = sd_clip_effect = 0
    (with one fixed test set the shared clip effect is not in it at all).
    """
    for col in ("freeze_mode", "seed", column):
        if col not in runs.columns:
            raise UserError(f"per-seed table lacks column {col}")
    for col in ("model", "lr_source"):
        if col in runs.columns and runs[col].nunique() > 1:
            raise UserError(f"per-seed table mixes several {col} values; select one first")
    dup = runs.duplicated(["freeze_mode", "seed"])
    if dup.any():
        row = runs[dup].iloc[0]
        raise UserError(f"per-seed table has two rows for mode {row['freeze_mode']}, seed {row['seed']}")
    by_mode = runs.pivot(index="seed", columns="freeze_mode", values=column)
    for name in (mode, reference):
        if name not in by_mode.columns:
            raise UserError(f"mode {name} is absent from the per-seed table")
    diff = (by_mode[mode] - by_mode[reference]).dropna().to_numpy(dtype=float)
    if diff.size < 2:
        raise UserError(f"{mode} vs {reference}: fewer than two paired seeds")
    return {
        "estimate": float(diff.mean()),
        "sd_run": float(np.std(diff, ddof=1)),
        "sd_clip": 0.0,
        "sd_clip_effect": 0.0,
        "n_runs": int(diff.size),
        "source": "per-seed totals (clip and run noise not separable)",
    }


def _mdd(
    sd_run: float,
    sd_clip: float,
    n_runs: np.ndarray,
    n_clips: int,
    alpha: float,
    power: float,
    sd_clip_effect: float,
    n_clips_total: int,
) -> np.ndarray:
    n_runs = np.asarray(n_runs, dtype=float)
    se = np.sqrt(sd_run**2 / n_runs + sd_clip**2 / (n_runs * n_clips) + sd_clip_effect**2 / n_clips_total)
    dof = n_runs - 1
    return (stats.t.ppf(1 - alpha / 2, dof) + stats.t.ppf(power, dof)) * se


def _check_power(alpha: float, power: float) -> None:
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise UserError(f"alpha and power must lie in (0, 1), got {alpha} and {power}")


def minimal_detectable_difference(
    sd_run: float,
    sd_clip: float,
    n_runs: int,
    n_clips: int,
    alpha: float = 0.05,
    power: float = 0.8,
    *,
    sd_clip_effect: float = 0.0,
    n_clips_total: int | None = None,
) -> float:
    """Smallest true difference (pp) a two-sided level-α test detects with the given power.

    MDD = (t_{1−α/2, N−1} + t_{power, N−1}) · se with N = n_runs and se² = sd_run²/N +
    sd_clip²/(N · n_clips) + sd_clip_effect²/n_clips_total. ``n_clips`` is clips per run;
    ``n_clips_total`` the distinct clips the runs share (default n_clips: one fixed test set;
    for k-fold, the dataset). The last term does not shrink with more runs.
    """
    _check_power(alpha, power)
    if n_runs < 2 or n_clips < 1:
        raise UserError(f"need n_runs ≥ 2 and n_clips ≥ 1, got {n_runs} and {n_clips}")
    total = n_clips if n_clips_total is None else n_clips_total
    return float(_mdd(sd_run, sd_clip, np.array(n_runs), n_clips, alpha, power, sd_clip_effect, total))


def plan(
    effect: float,
    components: Mapping[str, float],
    n_clips: int,
    alpha: float = 0.05,
    power: float = 0.8,
    *,
    n_clips_total: int | None = None,
    max_runs: int = 100_000,
) -> dict:
    """Fewest runs (seeds × folds × repeats) whose MDD is at most ``|effect|`` (pp).

    ``components``: ``variance_components`` or ``components_from_seed_csv`` output (sd_run,
    sd_clip, optional sd_clip_effect). ``n_runs`` is None when no number up to ``max_runs``
    suffices (the clip-effect floor ``mdd_limit`` exceeds the effect).
    """
    _check_power(alpha, power)
    sd_run, sd_clip = float(components["sd_run"]), float(components["sd_clip"])
    sd_clip_effect = float(components.get("sd_clip_effect", 0.0))
    total = n_clips if n_clips_total is None else n_clips_total
    candidates = np.arange(2, max_runs + 1)
    mdd = _mdd(sd_run, sd_clip, candidates, n_clips, alpha, power, sd_clip_effect, total)
    enough = np.flatnonzero(mdd <= abs(effect))
    limit = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * sd_clip_effect / math.sqrt(total)
    n_runs = int(candidates[enough[0]]) if enough.size else None
    return {
        "effect": float(effect),
        "n_runs": n_runs,
        "mdd": float(mdd[enough[0]]) if enough.size else math.nan,
        "mdd_limit": float(limit),
        "alpha": alpha,
        "power": power,
        "n_clips": n_clips,
        "n_clips_total": total,
    }


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

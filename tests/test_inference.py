"""Per-clip inference of the compare stage, checked by simulation against planted truths.

Outcomes are simulated per clip as Bernoulli(expit(μ_mode + u_clip + w_clip·[mode] + v_run)):
clip difficulty u shared by both modes, a mode × clip interaction w, and a run (seed) effect v
per mode and run. The planted accuracy difference is exact (Gauss–Hermite quadrature over the
logit-normal), so coverage and error rates are measured against the truth. Run with ``-s`` to
see the measured rates.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, special
from scipy import stats as sps

from transfer_freezing.errors import UserError
from transfer_freezing.study.evaluation import plan_lines
from transfer_freezing.study.inference import (
    Interval,
    components_from_seed_csv,
    corrected_resampled_t,
    difference_interval,
    holm,
    joint_contrast,
    judge,
    judge_all,
    minimal_detectable_difference,
    plan,
    sign_flip_test,
    tost,
    val_test_agreement,
    variance_components,
    verdict,
)
from transfer_freezing.study.stats import read_runs_csv

REFERENCE_CSV = Path(__file__).parent / "data" / "seed_results_summary.csv"
ALPHA = 0.05
TOLERANCE = 0.03  # allowed deviation of a measured rate (≥ 400 simulations: ~2.7 binomial SEs)

# Logit-scale sds of the simulation and the reference mode's accuracy.
SD_CLIP, SD_RUN, SD_CLIP_MODE, BASE_ACC = 2.0, 0.25, 0.4, 0.72
SD_REF = math.hypot(SD_CLIP, SD_RUN)
SD_MODE = math.sqrt(SD_CLIP**2 + SD_RUN**2 + SD_CLIP_MODE**2)
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(101)


def _accuracy(mu: float | np.ndarray, sd: float) -> np.ndarray:
    """E[expit(mu + sd·Z)], Z standard normal."""
    values = special.expit(np.add.outer(mu, sd * _NODES))
    return values @ _WEIGHTS / math.sqrt(2 * math.pi)


@functools.cache
def _intercepts(delta_pp: float) -> tuple[float, float]:
    """Logit intercepts (mode, reference) whose population accuracies differ by ``delta_pp``."""

    def solve(acc: float, sd: float) -> float:
        return optimize.brentq(lambda m: float(_accuracy(m, sd)) - acc, -20, 20)

    return solve(BASE_ACC + delta_pp / 100, SD_MODE), solve(BASE_ACC, SD_REF)


def _simulate(
    rng: np.random.Generator, delta_pp: float, seeds: int, clips: int, folds: int = 1, repeats: int = 1
) -> pd.DataFrame:
    """A clip table (modes 'mode' and 'ref'): one fixed test set (folds = 1) or repeated k-fold."""
    mu = np.array(_intercepts(delta_pp))
    u = rng.normal(0.0, SD_CLIP, clips)
    w = rng.normal(0.0, SD_CLIP_MODE, clips)
    if folds == 1:
        fold_of = np.zeros((repeats, clips), dtype=int)
    else:
        fold_of = np.stack([rng.permutation(clips) % folds for _ in range(repeats)])
    run_effect = rng.normal(0.0, SD_RUN, (2, seeds, repeats, folds))[
        :, :, np.arange(repeats)[:, None], fold_of
    ]
    eta = mu[:, None, None, None] + u + np.array([1.0, 0.0])[:, None, None, None] * w + run_effect
    correct = rng.random(eta.shape) < special.expit(eta)
    m, s, r, c = np.indices(eta.shape)
    return pd.DataFrame(
        {
            "mode": np.array(["mode", "ref"])[m.ravel()],
            "seed": s.ravel(),
            "fold": np.broadcast_to(fold_of, eta.shape).ravel(),
            "repeat": r.ravel(),
            "clip_id": c.ravel(),
            "correct": correct.ravel().astype(int),
        }
    )


def _report(label: str, rate: float, n: int) -> str:
    message = f"{label}: {100 * rate:.1f} % of {n} simulations"
    print(f"\n[inference] {message}")
    return message


def _coverage(design: dict, delta: float, n_sim: int, seed: int, **kwargs) -> tuple[float, np.ndarray]:
    rng = np.random.default_rng(seed)
    hits, estimates = 0, []
    for _ in range(n_sim):
        iv = difference_interval(_simulate(rng, delta, **design), "mode", "ref", **kwargs)
        hits += iv.low <= delta <= iv.high
        estimates.append((iv.estimate, iv.se))
    return hits / n_sim, np.array(estimates)


# --------------------------------------------------------------------------- interval


@pytest.mark.parametrize(
    ("label", "design", "n_sim"),
    [
        ("fixed test set, 10 seeds × 100 clips", {"seeds": 10, "clips": 100}, 500),
        (
            "repeated k-fold, 2 seeds × 5 folds × 2 repeats, 200 clips",
            {"seeds": 2, "clips": 200, "folds": 5, "repeats": 2},
            400,
        ),
    ],
)
def test_interval_covers_planted_difference(label: str, design: dict, n_sim: int) -> None:
    coverage, est = _coverage(design, delta=2.0, n_sim=n_sim, seed=11)
    message = _report(f"95 % interval coverage of a planted +2.0 pp ({label})", coverage, n_sim)
    se_ratio = math.sqrt(np.mean(est[:, 1] ** 2)) / np.std(est[:, 0], ddof=1)
    print(f"[inference]   mean estimate {est[:, 0].mean():+.2f} pp; rms se / empirical sd = {se_ratio:.3f}")
    assert abs(coverage - 0.95) <= TOLERANCE, message
    assert abs(se_ratio - 1) < 0.1, f"rms se / empirical sd = {se_ratio:.3f}"


def test_bootstrap_interval_is_conservative() -> None:
    """The pigeonhole bootstrap over-counts the 0/1 noise (Owen, 2007): it over-covers."""
    coverage, est = _coverage(
        {"seeds": 10, "clips": 100}, 2.0, n_sim=400, seed=12, method="bootstrap", n_boot=400
    )
    message = _report("95 % two-level bootstrap coverage (10 seeds × 100 clips)", coverage, 400)
    assert coverage >= 0.95 - TOLERANCE, message


def test_no_difference_false_different_rate() -> None:
    rng = np.random.default_rng(13)
    n_sim, different = 500, 0
    for _ in range(n_sim):
        result = judge(_simulate(rng, 0.0, seeds=10, clips=100), "mode", "ref", margin=3.0)
        different += result["verdict"] in ("better", "worse")
        assert (result["verdict"] in ("better", "worse")) == (result["p_different_holm"] < ALPHA)
    rate = different / n_sim
    message = _report("false 'better'/'worse' at a planted 0 pp (10 seeds × 100 clips, α 0.05)", rate, n_sim)
    assert rate <= ALPHA + TOLERANCE, message


def test_tost_false_equivalent_rate_at_the_margin() -> None:
    margin, design = 4.0, {"seeds": 20, "clips": 200}
    rng = np.random.default_rng(14)
    rates = {}
    for delta, n_sim in ((margin, 400), (0.0, 150)):
        equivalent = 0
        for _ in range(n_sim):
            result = judge(_simulate(rng, delta, **design), "mode", "ref", margin=margin)
            equivalent += result["verdict"] == "equivalent"
            if result["verdict"] != "better" and result["verdict"] != "worse":
                assert (result["verdict"] == "equivalent") == (result["p_equivalent_holm"] < ALPHA)
        rates[delta] = equivalent / n_sim
    message = _report(
        f"false 'equivalent' at a planted difference = margin {margin} pp (20 seeds × 200 clips)",
        rates[margin],
        400,
    )
    _report(f"'equivalent' (power) at a planted 0 pp, margin {margin} pp", rates[0.0], 150)
    assert rates[margin] <= ALPHA + TOLERANCE, message
    assert rates[0.0] > 0.5, f"TOST has too little power to be checked: {rates[0.0]:.2f}"


def test_clip_variance_recovers_planted_clip_effect_variance() -> None:
    """σ_b² (the between-clip variance of a clip's true difference) against the planted model's:
    per clip (u, w), the expected difference over run effects; its variance over u and w by
    quadrature."""
    mu_mode, mu_ref = _intercepts(2.0)
    z, weights = _NODES, _WEIGHTS / math.sqrt(2 * math.pi)
    u, w, a = (SD_CLIP * z)[:, None, None], (SD_CLIP_MODE * z)[None, :, None], (SD_RUN * z)[None, None, :]
    p_mode = special.expit(mu_mode + u + w + a) @ weights  # (u, w): averaged over the run effect
    p_ref = special.expit(mu_ref + u + a) @ weights
    b = 100 * (p_mode - p_ref)
    joint = np.outer(weights, weights)
    truth = float(np.sum(joint * b**2) - np.sum(joint * b) ** 2)
    rng = np.random.default_rng(15)
    estimates = [
        variance_components(_simulate(rng, 2.0, seeds=10, clips=100), "mode", "ref")["var_clip"]
        for _ in range(200)
    ]
    mean = float(np.mean(estimates))
    print(f"\n[inference] clip-level variance: planted {truth:.1f}, mean estimate {mean:.1f} pp²")
    assert abs(mean / truth - 1) < 0.15, f"planted {truth:.1f} pp², mean estimate {mean:.1f} pp²"


def test_moment_interval_matches_two_way_anova_on_a_balanced_table() -> None:
    clips = _simulate(np.random.default_rng(16), 2.0, seeds=6, clips=40)
    wide = clips.pivot_table(index=["seed", "clip_id"], columns="mode", values="correct")
    d = (100 * (wide["mode"] - wide["ref"])).unstack("clip_id").to_numpy()
    r, c = d.shape
    row, col, grand = d.mean(1, keepdims=True), d.mean(0, keepdims=True), d.mean()
    ms_row = c * np.sum((row - grand) ** 2) / (r - 1)
    ms_col = r * np.sum((col - grand) ** 2) / (c - 1)
    ms_e = np.sum((d - row - col + grand) ** 2) / ((r - 1) * (c - 1))
    variance = (ms_row + ms_col - ms_e) / (r * c)
    dof = (ms_row + ms_col - ms_e) ** 2 / (
        ms_row**2 / (r - 1) + ms_col**2 / (c - 1) + ms_e**2 / ((r - 1) * (c - 1))
    )
    iv = difference_interval(clips, "mode", "ref")
    # between-run variance / R + mean cross-run covariance of clips / C is the ANOVA combination
    assert iv.estimate == pytest.approx(grand)
    assert iv.se**2 == pytest.approx(variance)
    assert iv.dof >= r - 1 and dof > 0
    assert (iv.n_runs, iv.n_clips, iv.n_cells, iv.design) == (6, 40, 1, "runs")


def test_interval_rejects_bad_tables() -> None:
    clips = _simulate(np.random.default_rng(17), 0.0, seeds=2, clips=5)
    with pytest.raises(UserError, match="lacks column"):
        difference_interval(clips.drop(columns="fold"), "mode", "ref")
    with pytest.raises(UserError, match="0 or 1"):
        difference_interval(clips.assign(correct=0.5), "mode", "ref")
    with pytest.raises(UserError, match="no clip predictions"):
        difference_interval(clips, "mode", "freeze_none")
    with pytest.raises(UserError, match="scored twice"):
        difference_interval(pd.concat([clips, clips.head(1)]), "mode", "ref")
    one = difference_interval(clips[clips["seed"] == 0], "mode", "ref")
    assert one.note == "one run: no interval" and math.isnan(one.low) and math.isnan(one.se)


def test_judge_all_adjusts_across_modes() -> None:
    clips = _simulate(np.random.default_rng(18), 0.0, seeds=5, clips=60)
    second = clips[clips["mode"] == "mode"].assign(mode="other")
    table = judge_all(pd.concat([clips, second]), reference="ref", margin=3.0)
    assert list(table["mode"]) == ["mode", "other"]
    # one family: both claims of both modes, Holm over the four p-values together
    family = holm(np.concatenate([table["p_different"], table["p_equivalent"]]))
    assert table["p_different_holm"].tolist() == pytest.approx(family[:2].tolist())
    assert table["p_equivalent_holm"].tolist() == pytest.approx(family[2:].tolist())
    assert (table["p_different_holm"] >= table["p_different"]).all()
    assert set(table["verdict"]) <= {"better", "worse", "equivalent", "inconclusive"}


# --------------------------------------------------------------------------- tests and verdicts


def test_corrected_resampled_t_covers_under_correlated_folds() -> None:
    """Nadeau & Bengio's model: J fold differences, equicorrelated with ρ = n_test/(n_train+n_test)."""
    n_train, n_test, folds, repeats, n_sim, truth = 400, 100, 5, 2, 2000, 1.5
    rho = n_test / (n_train + n_test)
    rng = np.random.default_rng(19)
    shared = rng.normal(size=(n_sim, 1))
    diffs = truth + 3.0 * (
        math.sqrt(rho) * shared + math.sqrt(1 - rho) * rng.normal(size=(n_sim, folds * repeats))
    )
    covered = naive = 0
    for d in diffs:
        result = corrected_resampled_t(d.reshape(repeats, folds), n_train, n_test)
        covered += result["low"] <= truth <= result["high"]
        half = sps.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
        naive += abs(d.mean() - truth) <= half
    message = _report("corrected resampled t coverage (5 folds × 2 repeats)", covered / n_sim, n_sim)
    _report("uncorrected t coverage, same data", naive / n_sim, n_sim)
    assert abs(covered / n_sim - 0.95) <= TOLERANCE, message
    assert result["dof"] == folds * repeats - 1


def test_sign_flip_exact_values() -> None:
    assert sign_flip_test(np.array([1.0, 1.0, 1.0])) == pytest.approx(0.25)
    assert sign_flip_test(np.array([2.5] * 5)) == pytest.approx(2 / 2**5)
    assert sign_flip_test(np.zeros(4)) == 1.0
    assert sign_flip_test(np.array([3.0])) == 1.0
    # The 2^3 sign patterns of (−1, 2, 3) sum to ±6, ±4, ±2, ±0: P(|S| ≥ 4) = 4/8.
    assert sign_flip_test(np.array([-1.0, 2.0, 3.0])) == pytest.approx(0.5)


def test_sign_flip_matches_scipy_and_holds_its_level() -> None:
    rng = np.random.default_rng(20)
    for d in (rng.normal(size=8), rng.integers(-3, 4, size=9).astype(float), np.array([0.1, 0.2, 0.3, -0.6])):
        exact = sps.permutation_test(
            (d,),
            lambda x, axis: np.mean(x, axis=axis),
            permutation_type="samples",
            n_resamples=np.inf,
            vectorized=True,
        )
        assert sign_flip_test(d) == pytest.approx(exact.pvalue)
    large = sign_flip_test(np.full(25, 1.7), n_resamples=9999)
    assert np.isfinite(large) and large <= 1e-3
    p = np.array([sign_flip_test(d) for d in rng.normal(size=(2000, 10))])
    message = _report(
        "sign-flip test rejections under the null (N = 10, α 0.05)", float(np.mean(p < ALPHA)), 2000
    )
    assert np.mean(p < ALPHA) <= ALPHA + TOLERANCE, message


def test_verdict_rule_agrees_with_tost() -> None:
    rng = np.random.default_rng(21)
    for estimate, se, dof, margin in zip(
        rng.normal(0, 3, 500),
        rng.uniform(0.2, 3, 500),
        rng.uniform(2, 50, 500),
        rng.uniform(0.5, 5, 500),
        strict=True,
    ):
        low, high = estimate + np.array([-1, 1]) * sps.t.ppf(1 - ALPHA / 2, dof) * se
        eq = tuple(estimate + np.array([-1, 1]) * sps.t.ppf(1 - ALPHA, dof) * se)
        outcome = verdict(low, high, margin, eq)
        p_eq = tost(estimate, se, dof, margin, ALPHA)
        if outcome in ("better", "worse"):
            assert (low > 0) if outcome == "better" else (high < 0)
        else:
            assert (outcome == "equivalent") == (p_eq < ALPHA)
    assert verdict(-1.0, 1.0, 2.0) == "equivalent"
    assert verdict(-1.0, 3.0, 2.0) == "inconclusive"
    assert verdict(0.5, 3.0, 2.0) == "better"
    assert verdict(math.nan, math.nan, 2.0) == "inconclusive"
    assert tost(0.0, 0.0, 9, 1.0) == 0.0 and tost(2.0, 0.0, 9, 1.0) == 1.0


def test_joint_contrast_on_the_original_and_its_level() -> None:
    runs = read_runs_csv(REFERENCE_CSV).pivot(index="seed", columns="freeze_mode", values="test_acc")
    result = joint_contrast(
        runs["freeze_patch"] - runs["freeze_none"], runs["freeze_patch_0_5"] - runs["freeze_patch"]
    )
    print(
        f"\n[inference] original: joint contrast p = {result['p']:.4f} "
        f"(patch − none {result['estimate_first']:+.1f} pp, p {result['p_first']:.4f}; "
        f"0_5 − patch {result['estimate_second']:+.1f} pp, p {result['p_second']:.4f})"
    )
    assert result["p"] == max(result["p_first"], result["p_second"])
    assert result["estimate_first"] == pytest.approx(-2.5)
    flips = joint_contrast(np.array([-1.0, -2.0, -3.0]), np.array([1.0, 2.0, 3.0]), method="sign_flip")
    assert flips["p"] == pytest.approx(0.125)
    constant = joint_contrast(np.full(4, -2.0), np.full(4, 1.0))  # zero spread: t undefined
    assert constant["p"] == pytest.approx(1 / 2**4)
    # Least favourable null: the first effect clearly holds, the second is exactly 0.
    rng = np.random.default_rng(22)
    p = [joint_contrast(rng.normal(-10, 4, 10), rng.normal(0, 4, 10))["p"] for _ in range(1000)]
    message = _report(
        "joint contrast rejections under its least favourable null (α 0.05)",
        float(np.mean(np.array(p) < ALPHA)),
        1000,
    )
    assert np.mean(np.array(p) < ALPHA) <= ALPHA + TOLERANCE, message


# --------------------------------------------------------------------------- planning


def test_mdd_and_plan_on_the_original_numbers() -> None:
    components = components_from_seed_csv(read_runs_csv(REFERENCE_CSV), "freeze_patch_0_5", "freeze_none")
    mdd = minimal_detectable_difference(se=components["sd_run"] / math.sqrt(10), dof=9)
    planned = plan(1.6, components, margin=1.0)
    print(
        f"\n[inference] original: paired sd {components['sd_run']:.2f} pp, MDD (N=10) {mdd:.2f} pp; "
        f"runs to detect 1.6 pp: {planned['runs_different']}; to show equivalence at ±1 pp: "
        f"{planned['runs_equivalent']}"
    )
    assert mdd == pytest.approx(4.1, abs=0.1)
    assert components["sd_run"] == pytest.approx(4.14, abs=0.01)
    assert components["estimate"] == pytest.approx(1.6)
    assert components["design"] == "runs" and math.isnan(components["var_clip"])
    with pytest.raises(UserError, match="two rows"):
        components_from_seed_csv(pd.concat([read_runs_csv(REFERENCE_CSV)] * 2), "freeze_patch", "freeze_none")
    assert 50 <= planned["runs_different"] <= 60 and planned["cells_different"] == 1
    assert planned["runs_equivalent"] > planned["runs_different"]
    assert planned["floor_different"] == 0.0 and not planned["clip_identified"]


def test_mdd_has_the_stated_power_by_simulation() -> None:
    sd, n = 4.1, 10
    mdd = minimal_detectable_difference(se=sd / math.sqrt(n), dof=n - 1)
    diffs = np.random.default_rng(23).normal(mdd, sd, size=(4000, n))
    power = float(np.mean(sps.ttest_1samp(diffs, 0.0, axis=1).pvalue < ALPHA))
    message = _report(f"power of the paired t-test at the MDD {mdd:.2f} pp (N = 10)", power, 4000)
    assert abs(power - 0.8) <= TOLERANCE, message
    assert math.isnan(minimal_detectable_difference(math.nan, math.nan))


def test_plan_counts_cells_and_reports_the_clip_floor() -> None:
    kfold = {"design": "cells", "folds": 5, "n_clips": 400, "var_pass": 40.0, "var_clip": 0.0}
    planned = plan(2.0, kfold, margin=3.0)
    assert planned["runs_different"] == 5 * planned["passes_different"] == planned["cells_different"]
    se = math.sqrt(40.0 / planned["passes_different"])
    dof = planned["passes_different"] * 4
    assert (sps.t.ppf(0.975, dof) + sps.t.ppf(0.8, dof)) * se <= 2.0
    fewer = plan(2.0, kfold | {"var_pass": 20.0})
    assert fewer["passes_different"] < planned["passes_different"]
    floor = plan(0.5, kfold | {"var_clip": 400.0}, margin=0.5)
    assert floor["passes_different"] is None and floor["floor_different"] > 0.5
    assert floor["passes_equivalent"] is None and floor["floor_equivalent"] > 0.5


def test_plan_lines_say_when_only_more_clips_help() -> None:
    """The mode wins on even clips and loses on odd ones, every run alike: a large clip-level
    variance of the mode effect, so a small effect is out of reach of any number of runs."""
    rng = np.random.default_rng(25)
    seed, clip = np.meshgrid(np.arange(4), np.arange(60), indexing="ij")
    even = (clip % 2 == 0).ravel()
    flip = rng.random((2, even.size)) < 0.1
    frame = {"seed": seed.ravel(), "fold": 0, "repeat": 0, "clip_id": clip.ravel(), "model": "m",
             "recipe": "fixed"}
    clips = pd.concat([pd.DataFrame({**frame, "mode": "mode", "correct": (even ^ flip[0]).astype(int)}),
                       pd.DataFrame({**frame, "mode": "ref", "correct": (~even ^ flip[1]).astype(int)})])
    [line] = plan_lines(clips, "ref", effect=5.0, margin=5.0)
    assert line.count("add clips: a larger or second dataset") == 2
    assert "clip-level sd of the mode effect" in line
    [line] = plan_lines(clips, "ref", effect=60.0, margin=60.0)
    assert "runs on this one split detect 60 pp" in line and "add clips" not in line


def test_one_pass_of_kfold_has_cells_as_units_and_no_clip_variance() -> None:
    clips = _simulate(np.random.default_rng(24), 0.0, seeds=1, clips=200, folds=5)
    comps = variance_components(clips, "mode", "ref")
    assert comps["design"] == "cells" and comps["n_runs"] == 5 and comps["n_cells"] == 5
    assert math.isnan(comps["var_clip"])  # no clip scored twice
    iv = difference_interval(clips, "mode", "ref")
    assert isinstance(iv, Interval) and iv.dof == 4 and iv.se > 0


def test_kfold_with_repeats_is_judged_and_planned_from_clips_and_from_runs() -> None:
    clips = _simulate(np.random.default_rng(26), 2.0, seeds=2, clips=90, folds=3, repeats=2)
    row = judge(clips, "mode", "ref", margin=3.0)
    assert (row["n_runs"], row["n_cells"], row["n_clips"], row["design"]) == (12, 6, 90, "cells")
    assert row["dof"] >= 2 * (3 - 1) and row["se"] > 0
    comps = variance_components(clips, "mode", "ref")
    assert comps["var_clip"] == comps["var_clip"]  # identified: clips are scored in both repeats
    runs = (clips.groupby(["mode", "seed", "repeat", "fold"])["correct"].mean().mul(100)
            .rename("test_acc").reset_index().rename(columns={"mode": "freeze_mode"}))
    from_runs = components_from_seed_csv(runs, "mode", "ref")
    assert from_runs["design"] == "cells" and from_runs["n_cells"] == 6 and from_runs["n_runs"] == 12
    assert plan(2.0, from_runs)["runs_different"] % 3 == 0


def test_no_zero_standard_error_when_every_cell_mean_agrees() -> None:
    """Two folds whose means are equal by construction: the between-cell variance is 0, the
    table is not degenerate, so the se falls back to the independent-cells variance."""
    rows = []
    for fold, pattern in ((0, [1, 0, 0, 1]), (1, [0, 1, 1, 0])):
        for i, correct in enumerate(pattern):
            clip = f"c{fold}{i}"
            cell = {"seed": 1, "fold": fold, "repeat": 0, "clip_id": clip}
            rows += [{**cell, "mode": "mode", "correct": correct}, {**cell, "mode": "ref", "correct": 0}]
    iv = difference_interval(pd.DataFrame(rows), "mode", "ref")
    assert iv.estimate == 50.0 and iv.se > 0 and iv.high > iv.low


# --------------------------------------------------------------------------- validation vs test


def test_val_test_agreement_on_the_original() -> None:
    runs = read_runs_csv(REFERENCE_CSV)
    means = runs.groupby("freeze_mode")[["best_val_acc", "test_acc"]].mean()
    result = val_test_agreement(means["best_val_acc"].to_dict(), means["test_acc"].to_dict(), "freeze_none")
    print(
        f"\n[inference] original: val-vs-test Spearman {result['spearman']:+.2f} "
        f"over {result['n_modes']} modes; sign flips {result['sign_flips']}"
    )
    assert result["val_effects"]["freeze_patch"] == pytest.approx(2.6)
    assert result["test_effects"]["freeze_patch"] == pytest.approx(-2.5)
    assert "freeze_patch" in result["sign_flips"]
    assert "freeze_patch_0_11" not in result["sign_flips"]
    assert -1 <= result["spearman"] <= 1

"""Statistics and figure of the compare stage, checked against the original study's per-seed CSV."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from transfer_freezing.errors import UserError
from transfer_freezing.study.figures import plot_comparison
from transfer_freezing.study.inference import judge_runs
from transfer_freezing.study.stats import (
    DZ,
    SIGNFLIP_P,
    T_P,
    TEST_COLUMNS,
    holm,
    read_runs_csv,
    summarize,
    to_markdown,
)

REFERENCE_CSV = Path(__file__).parent / "data" / "seed_results_summary.csv"
MODES = ["freeze_none", "freeze_patch", "freeze_patch_0_2", "freeze_patch_0_5", "freeze_patch_0_11"]


@pytest.fixture
def reference_runs() -> pd.DataFrame:
    return read_runs_csv(REFERENCE_CSV)


@pytest.fixture
def reference_summary(reference_runs: pd.DataFrame) -> pd.DataFrame:
    return summarize(reference_runs).set_index("freeze_mode")


def _runs(test_by_mode: dict[str, list[float]], model: str = "m") -> pd.DataFrame:
    rows = [
        {
            "model": model,
            "freeze_mode": mode,
            "seed": seed,
            "test_acc": acc,
            "best_val_acc": acc + 5.0,
        }
        for mode, accs in test_by_mode.items()
        for seed, acc in enumerate(accs, start=1)
    ]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    ("mode", "mean", "std"),
    [
        ("freeze_none", 71.6, 2.9),
        # DESIGN.md quotes 69.1±2.9, but the CSV gives sd = sqrt(72.9 / 9) = 2.846
        # (the reference PNG's band agrees).
        ("freeze_patch", 69.1, 2.8),
        ("freeze_patch_0_2", 71.1, 2.6),
        ("freeze_patch_0_5", 73.2, 2.7),
        ("freeze_patch_0_11", 63.1, 2.7),
    ],
)
def test_summary_reproduces_reference_mean_and_std(
    reference_summary: pd.DataFrame, mode: str, mean: float, std: float
) -> None:
    row = reference_summary.loc[mode]

    assert round(row["test_mean"], 1) == mean
    assert round(row["test_std"], 1) == std
    assert row["n"] == 10
    assert row["ci_low"] < row["test_mean"] < row["ci_high"]


def test_summary_keeps_mode_order_of_first_appearance(reference_runs: pd.DataFrame) -> None:
    shuffled = pd.concat([reference_runs.iloc[4:], reference_runs.iloc[:4]], ignore_index=True)

    summary = summarize(shuffled)

    assert list(summary["freeze_mode"]) == MODES[4:] + MODES[:4]
    assert (summary["recipe"] == "fixed").all()


def test_paired_t_test_none_vs_0_5_is_not_significant(reference_summary: pd.DataFrame) -> None:
    row = reference_summary.loc["freeze_patch_0_5"]

    assert abs(row["pvalue_runs_independent_t"] - 0.253) < 0.005
    assert row["diff_vs_ref"] == pytest.approx(1.6)
    assert row["n_pairs"] == 10


def test_holm_adjusted_p_values_are_at_least_raw(reference_summary: pd.DataFrame) -> None:
    tested = reference_summary.drop(index="freeze_none")

    for col in ("pvalue_runs_independent_t", "pvalue_runs_independent_signflip"):
        assert (tested[f"{col}_holm"] >= tested[col]).all()
        assert (tested[f"{col}_holm"] <= 1.0).all()


def test_reference_row_has_zero_diff_and_no_tests(reference_summary: pd.DataFrame) -> None:
    row = reference_summary.loc["freeze_none"]

    assert row["diff_vs_ref"] == 0.0
    for col in TEST_COLUMNS:
        assert math.isnan(row[col])


def test_cohens_dz_is_mean_over_sd_of_paired_differences() -> None:
    runs = _runs({"freeze_none": [70, 72, 74], "freeze_patch": [71, 75, 75]})  # diffs 1, 3, 1

    row = summarize(runs).iloc[1]

    assert row["diff_vs_ref"] == pytest.approx(5 / 3)
    assert row["cohens_dz_per_run"] == pytest.approx((5 / 3) / np.std([1, 3, 1], ddof=1))


def test_holm_matches_hand_computed_example() -> None:
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, max(0.04*1, 0.06)=0.06
    adjusted = holm([0.01, 0.04, 0.03, 0.005])

    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_skips_nan() -> None:
    adjusted = holm([0.6, float("nan"), 0.2])

    np.testing.assert_allclose(adjusted, [0.6, np.nan, 0.4])
    assert holm([0.9, 0.8])[0] == 1.0


def test_identical_modes_give_no_nan_from_the_sign_flip_test() -> None:
    runs = _runs({"freeze_none": [70, 72, 74], "freeze_patch": [70, 72, 74]})

    row = summarize(runs).iloc[1]

    assert row["diff_vs_ref"] == 0.0
    assert row[SIGNFLIP_P] == 1.0 and row[f"{SIGNFLIP_P}_holm"] == 1.0
    for col in (T_P, f"{T_P}_holm", DZ):  # zero spread: t and d_z undefined
        assert math.isnan(row[col])


def test_equal_nonzero_differences_give_the_exact_sign_flip_p() -> None:
    runs = _runs({"freeze_none": [70, 72, 74], "freeze_patch": [72, 74, 76]})

    row = summarize(runs).iloc[1]

    assert row[SIGNFLIP_P] == pytest.approx(0.25)  # 2 of 8 sign patterns reach |mean| = 2


def test_single_seed_gives_nan_spread_without_crashing() -> None:
    runs = _runs({"freeze_none": [70], "freeze_patch": [72]})

    summary = summarize(runs)

    assert summary["n"].tolist() == [1, 1]
    assert summary[["test_std", "ci_low", "ci_high", T_P, SIGNFLIP_P]].isna().all().all()
    assert summary["diff_vs_ref"].tolist() == [0.0, 2.0]


def test_pairing_uses_only_seeds_present_in_both() -> None:
    runs = _runs({"freeze_none": [70, 72, 74, 99], "freeze_patch": [71, 74, 74]})

    row = summarize(runs).iloc[1]

    assert row["n_pairs"] == 3
    assert row["diff_vs_ref"] == pytest.approx(1.0)


def test_missing_column_raises_user_error(reference_runs: pd.DataFrame) -> None:
    with pytest.raises(UserError, match="test_acc"):
        summarize(reference_runs.drop(columns="test_acc"))


def test_empty_seed_raises_user_error(reference_runs: pd.DataFrame) -> None:
    runs = reference_runs.astype({"seed": float})
    runs.loc[3, "seed"] = float("nan")

    with pytest.raises(UserError, match="empty seed"):
        summarize(runs)


def test_duplicate_run_raises_user_error(reference_runs: pd.DataFrame) -> None:
    runs = pd.concat([reference_runs, reference_runs.iloc[[0]]], ignore_index=True)

    with pytest.raises(UserError, match="duplicate run"):
        summarize(runs)


def test_missing_reference_mode_names_the_modes_present() -> None:
    runs = _runs({"freeze_patch": [70, 72], "freeze_patch_0_5": [71, 73]})

    with pytest.raises(UserError, match="freeze_patch, freeze_patch_0_5"):
        summarize(runs)


def test_read_runs_csv_missing_file_raises_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_runs_csv(tmp_path / "absent.csv")


def test_read_runs_csv_missing_column_raises_user_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    path.write_text("timestamp,model,freeze_mode,seed,test_acc\n2025-01-01,m,freeze_none,1,70\n")

    with pytest.raises(UserError, match="best_val_acc"):
        read_runs_csv(path)


def test_markdown_is_the_main_table_and_keeps_the_per_run_tests_out(reference_runs: pd.DataFrame) -> None:
    summary = summarize(reference_runs)
    judged = judge_runs(reference_runs, "freeze_none", margin=1.0)
    judged = judged.rename(columns={"mode": "freeze_mode"}).drop(columns=["reference", "margin"])
    merged = summary.merge(judged.drop(columns="confidence"), on="freeze_mode", how="left")
    text = to_markdown(merged, margin=1.0)

    assert "71.6 ± 2.9" in text
    header = text.splitlines()[0]
    for column in ("freeze mode", "runs × clips", "Δ test (pp) [95% CI]", "verdict", "MDD 80 % (pp)"):
        assert column in header
    assert "0.253" not in text and "p (" not in header  # per-run p-values: CSV and JSON only
    row = next(line for line in text.splitlines() if "freeze_patch_0_5 " in line)
    assert "+1.6 [" in row and "inconclusive" in row
    assert "Holm-adjusted over one family" in text
    p_runs_independent = summary.loc[summary["freeze_mode"] == "freeze_patch_0_5", T_P].iloc[0]
    assert p_runs_independent == pytest.approx(0.253, abs=0.001)


def test_runs_of_repeated_kfold_are_keyed_by_seed_repeat_and_fold() -> None:
    rows = [{"model": "m", "freeze_mode": mode, "seed": seed, "repeat": repeat, "fold": fold,
             "test_acc": 70.0 + (2.0 if mode == "b" else 0.0) + seed + 0.5 * fold - repeat,
             "best_val_acc": 70.0}
            for mode in ("a", "b") for seed in (1, 2) for repeat in (0, 1) for fold in (0, 1, 2)]
    runs = pd.DataFrame(rows)

    summary = summarize(runs, reference_mode="a").set_index("freeze_mode")

    assert summary.loc["b", "n"] == 12 and summary.loc["b", "n_pairs"] == 12
    assert summary.loc["b", "diff_vs_ref"] == pytest.approx(2.0)
    with pytest.raises(UserError, match="seed 1, repeat 0, fold 0"):
        summarize(pd.concat([runs, runs.iloc[[0]]]), reference_mode="a")


def test_markdown_shows_trainable_share_as_percent() -> None:
    runs = _runs({"freeze_none": [70, 72], "freeze_patch_0_5": [71, 74]})
    runs["trainable_share"] = [1.0, 1.0, 0.4957, 0.4957]
    runs["frozen_blocks"] = [0, 0, 6, 6]

    summary = summarize(runs)
    text = to_markdown(summary)

    assert summary["frozen_blocks"].tolist() == [0, 6]
    assert "49.57 %" in text and "100.00 %" in text


def test_figure_is_written_for_one_model(reference_runs: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "reports" / "freezing_comparison.png"

    plot_comparison(reference_runs, summarize(reference_runs), path)

    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporaries left


def test_figure_is_written_for_two_models_fixed_and_sweep(
    reference_runs: pd.DataFrame, tmp_path: Path
) -> None:
    vit = reference_runs.assign(recipe="fixed")
    cnn = reference_runs.assign(
        model="resnet50", recipe="fixed", test_acc=lambda d: d.test_acc - 3
    )
    runs = pd.concat([vit, cnn, vit.assign(recipe="sweep"), cnn.assign(recipe="sweep")])
    path = tmp_path / "cmp.png"

    plot_comparison(runs, summarize(runs), path)

    assert path.stat().st_size > 0

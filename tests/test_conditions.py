"""``tfreeze compare --from-csv`` over the original's plain and augmented per-seed CSVs."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from transfer_freezing import cli, config
from transfer_freezing.study import compare

from conftest import REPO, write_params

DATA = REPO / "tests/data"
PLAIN, AUG, AUG_FREEZE = (str(DATA / f"seed_results_summary{s}.csv") for s in ("", "_aug", "_aug_freeze"))


def _welch(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Welch's difference of means, its 95 % interval and p, written out from the formulas."""
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    diff, se = x.mean() - y.mean(), math.sqrt(vx + vy)
    half = sps.t.ppf(0.975, df) * se
    return diff, diff - half, 2 * sps.t.sf(abs(diff) / se, df)


def test_the_original_augmented_csvs_are_summarised_next_to_the_plain_one(tmp_path, capsys):
    p = config.load(write_params(tmp_path))
    summary = compare.from_csv(p, [PLAIN, AUG, AUG_FREEZE], str(tmp_path / "out"))
    table = summary.set_index(["condition", "freeze_mode"])
    assert set(summary["model"]) == {"vit_b_16"}  # vit_b_16_aug lines up with vit_b_16
    assert table.loc[("augmented", "freeze_none"), "n"] == 11
    assert table.loc[("augmented", "freeze_none"), "test_mean"] == pytest.approx(76.18, abs=0.005)
    assert table.loc[("plain", "freeze_none"), "test_mean"] == pytest.approx(71.6)
    # the plain rows are what the plain CSV alone gives (one condition: no condition column)
    alone = compare.from_csv(p, [PLAIN], str(tmp_path / "alone")).set_index("freeze_mode")
    assert "condition" not in alone.columns
    plain = table.loc["plain"]
    assert plain["pvalue_runs_independent_t"].equals(alone.loc[plain.index, "pvalue_runs_independent_t"])
    assert table.loc[("augmented", "freeze_patch_0_8"), "diff_vs_ref"] == pytest.approx(66 - 76)  # seed 1
    said = capsys.readouterr().out
    assert "| condition" in said
    x = pd.read_csv(AUG)["test_acc"].to_numpy(float)
    y = pd.read_csv(PLAIN).query("freeze_mode == 'freeze_none'")["test_acc"].to_numpy(float)
    diff, low, p_value = _welch(x, y)
    [row] = pd.read_csv(tmp_path / "out/condition_contrast.csv").to_dict("records")
    assert (row["condition"], row["baseline"], row["mode"]) == ("augmented", "plain", "freeze_none")
    assert (row["diff"], row["ci_low"], row["welch_p"]) == pytest.approx((diff, low, p_value), rel=1e-9)
    assert "freeze_none: augmented 76.2 % (n=11) vs plain 71.6 % (n=10): +4.6 pp" in said
    assert "## Conditions" in (tmp_path / "out/freezing_comparison.md").read_text()


def test_labels_name_the_conditions_and_must_match_the_csvs(tmp_path, capsys):
    params = str(write_params(tmp_path))
    out = str(tmp_path / "out")
    assert cli.main(["compare", "--params", params, "--from-csv", PLAIN, AUG, "--out", out,
                     "--label", "no-aug", "--label", "aug"]) == 0
    table = pd.read_csv(tmp_path / "out/freezing_comparison.csv")
    assert list(pd.unique(table["condition"])) == ["no-aug", "aug"]
    assert "freeze_none: aug 76.2 % (n=11) vs no-aug 71.6 %" in capsys.readouterr().out
    assert cli.main(["compare", "--params", params, "--from-csv", PLAIN, AUG, "--out", out,
                     "--label", "aug"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--label given 1 time(s) for 2 CSV(s)" in err and "\n" not in err

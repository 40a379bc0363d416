"""The compare stage's outputs for repeated k-fold (folds × repeats × seeds), from planted per-clip
predictions: nothing trains; the end-to-end `dvc repro` with repeats is test_pipeline's."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from transfer_freezing.study import compare, evaluation, simulation, stats

MODES = {"mode": "freeze_patch_0_11", "ref": "freeze_none"}
SHARE = {"freeze_none": 1.0, "freeze_patch_0_11": 0.0001}


def _study(folds: int, repeats: int, seeds: int, clips: int = 90, seed: int = 3) -> tuple[pd.DataFrame, dict]:
    """Per-run rows as ``compare.collect`` returns them and the clip tables, from one simulation."""
    cond = simulation.Condition("t", clips=clips, folds=folds, repeats=repeats, seeds=seeds,
                                sd_cell=0.2 if folds > 1 else 0.0)
    parts = {}
    for split, offset in (("test", 0), ("val", 1)):
        batch = simulation.simulate(cond, -2.0, 1, np.random.default_rng(seed + offset))
        table = simulation.to_clip_table(batch, 0)
        table["mode"] = table["mode"].map(MODES)
        table["seed"] += 1
        parts[split] = table.assign(model="vit_demo", recipe="fixed")
    acc = parts["test"].groupby(["mode", "seed", "repeat", "fold"])["correct"].mean().mul(100)
    val = parts["val"].groupby(["mode", "seed", "repeat", "fold"])["correct"].mean().mul(100)
    runs = pd.DataFrame({"test_acc": acc, "best_val_acc": val}).reset_index()
    runs = runs.rename(columns={"mode": "freeze_mode"}).assign(
        model="vit_demo", recipe="fixed", lr=1e-3, frozen_blocks=0,
        cell=lambda d: d["repeat"] * folds + d["fold"], run_id=lambda d: [f"r{i}" for i in range(len(d))])
    runs["trainable_share"] = runs["freeze_mode"].map(SHARE)
    return runs, parts


def test_repeated_kfold_reaches_the_table_csv_json_and_figures(tmp_path) -> None:
    runs, clips = _study(folds=3, repeats=2, seeds=2)

    summary = compare.write_outputs(runs, tmp_path, "freeze_none", 0.95, clips, margin=1.0, folds=3)

    row = summary.set_index("freeze_mode").loc["freeze_patch_0_11"]
    assert (row["n"], row["n_runs"], row["n_cells"], row["n_clips"]) == (12, 12, 6, 90)
    assert row["design"] == "cells" and row["dof"] >= 2 * (3 - 1)
    assert row["low"] < row["estimate"] < row["high"] and row["mdd"] > 0
    assert row["verdict"] in ("better", "worse", "equivalent", "inconclusive")
    markdown = (tmp_path / compare.NAMES["md"]).read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| model"))
    assert "runs × clips" in header and "verdict" in header and "MDD 80 % (pp)" in header
    assert "p (" not in header and "N-B" not in header
    assert "| 12 × 90 " in markdown
    table = pd.read_csv(tmp_path / compare.NAMES["csv"])
    for column in (stats.T_P, stats.SIGNFLIP_P, stats.DZ, "p_different_holm", "p_equivalent_holm",
                   f"pvalue_{evaluation.NB}", "sd_clip_effect"):
        assert column in table.columns
    saved = json.loads((tmp_path / compare.NAMES["stats"]).read_text())
    assert saved["vit_demo/freeze_patch_0_11"]["n_cells"] == 6
    assert saved["vit_demo/freeze_patch_0_11"][stats.T_P] is not None
    for name in ("png", "forest", "depth"):
        assert (tmp_path / compare.NAMES[name]).stat().st_size > 5_000


def test_plans_from_the_clips_and_from_the_runs_csv_of_a_repeated_kfold_study(tmp_path) -> None:
    runs, clips = _study(folds=3, repeats=2, seeds=2)
    compare.write_outputs(runs, tmp_path, "freeze_none", 0.95, clips, margin=1.0, folds=3)

    [from_clips] = evaluation.plan_lines(clips["test"], "freeze_none", effect=2.0, margin=1.0)
    written = stats.validate_runs(stats.read_runs_csv(tmp_path / compare.NAMES["runs"]))
    [from_csv] = evaluation.plan_lines_from_runs(written, "freeze_none", effect=2.0, margin=1.0)

    for line in (from_clips, from_csv):
        assert line.startswith("vit_demo (fixed) freeze_patch_0_11 vs freeze_none: ")
        assert "measured on 12 runs in 6 cell(s)" in line
        assert "repeats of the 3 folds" in line or "add clips" in line
    assert "per-run accuracies cannot show the clip-level variance" in from_csv


def test_one_run_per_mode_says_there_is_no_interval(tmp_path) -> None:
    runs, clips = _study(folds=1, repeats=1, seeds=1)

    summary = compare.write_outputs(runs, tmp_path, "freeze_none", 0.95, clips, margin=1.0)

    row = summary.set_index("freeze_mode").loc["freeze_patch_0_11"]
    assert row["note"] == "one run: no interval" and row["verdict"] == "inconclusive"
    assert np.isnan(row["low"]) and np.isnan(row["mdd"])
    markdown = (tmp_path / compare.NAMES["md"]).read_text()
    assert "(one run: no interval)" in markdown
    assert (tmp_path / compare.NAMES["forest"]).is_file()


def test_the_reference_mode_alone_still_writes_every_figure(tmp_path) -> None:
    # A baseline-only study (grid.freeze_modes: [freeze_none]) under `dvc repro`: the forest figure
    # is a declared output, so it says there is nothing to compare instead of being left out.
    runs, clips = _study(folds=3, repeats=2, seeds=2)
    alone = runs["freeze_mode"] == "freeze_none"
    clips = {split: table[table["mode"] == "freeze_none"] for split, table in clips.items()}

    summary = compare.write_outputs(runs[alone], tmp_path, "freeze_none", 0.95, clips, margin=1.0, folds=3)

    assert list(summary["freeze_mode"]) == ["freeze_none"]
    for name in ("md", "csv", "runs", "stats", "png", "forest", "depth"):
        assert (tmp_path / compare.NAMES[name]).stat().st_size > 0, name


def test_duplicate_runs_name_their_repeat_and_fold() -> None:
    runs, _ = _study(folds=3, repeats=2, seeds=2)
    with pytest.raises(Exception, match="seed 1, repeat 0, fold 0"):
        stats.summarize(pd.concat([runs, runs.iloc[[0]]]))


def test_a_repeated_kfold_runs_csv_is_compared_with_the_same_model_at_run_level(tmp_path) -> None:
    runs, _ = _study(folds=3, repeats=2, seeds=2)

    summary = compare.write_outputs(runs, tmp_path, "freeze_none", 0.95, margin=1.0)  # --from-csv

    row = summary.set_index("freeze_mode").loc["freeze_patch_0_11"]
    assert (row["design"], row["n_runs"], row["n_cells"]) == ("cells", 12, 6)
    assert row["low"] < row["estimate"] < row["high"] and row["dof"] >= 4
    assert "per-run accuracies" in (tmp_path / compare.NAMES["md"]).read_text()

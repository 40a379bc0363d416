"""Scores beyond accuracy (macro-F1, NLL, ECE): planted values, their paired comparison, their names."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from transfer_freezing.study import compare, evaluation, inference
from transfer_freezing.train import scores, tracking
from transfer_freezing.train import stage as train_stage
from transfer_freezing.train.core import Prediction, Result


def test_macro_f1_and_nll_equal_their_planted_values():
    labels = torch.tensor([0, 0, 1, 1])
    # predictions 0, 1, 1, 1; the true class always at probability 0.5 or 0.8
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.8, 0.0], [0.25, 0.5, 0.25], [0.2, 0.8, 0.0]])

    got = scores.scores(labels, probs, num_classes=3)

    f1_class0, f1_class1 = 2 / 3, 0.8  # P 1 R 1/2; P 2/3 R 1; class 2 never true nor predicted: F1 0
    assert got["macro_f1"] == pytest.approx(100 * (f1_class0 + f1_class1 + 0.0) / 3)
    true_p = [0.5, 0.2, 0.5, 0.8]
    assert got["nll"] == pytest.approx(-np.mean(np.log(true_p)), rel=1e-6)


def test_each_score_equals_its_library_on_random_and_edge_inputs():
    # The scores are torch code (their libraries cost each train stage 1.3 s of imports): here each
    # is checked against the library it replaces, on 300 random splits of 1-200 clips and 2-11
    # classes with sharp and flat rows, classes absent from the labels, and one-hot rows (a
    # confidence of exactly 1.0, which torchmetrics bins on its own).
    from sklearn.metrics import f1_score, log_loss
    from torchmetrics.functional.classification import multiclass_calibration_error

    rng = np.random.default_rng(0)
    for trial in range(300):
        n, k = int(rng.integers(1, 200)), int(rng.integers(2, 12))
        logits = rng.normal(0, rng.uniform(0.1, 8), (n, k))
        probs = torch.softmax(torch.tensor(logits, dtype=torch.float32), 1)
        if trial % 5 == 0:
            probs[int(rng.integers(0, n))] = torch.eye(k)[int(rng.integers(0, k))]
        labels = rng.integers(0, k if trial % 3 else max(1, k // 2), n)
        got = scores.scores(labels, probs, k)
        classes, pred = list(range(k)), probs.argmax(1).numpy()
        rows = probs.double() / probs.double().sum(1, keepdim=True)
        assert got["macro_f1"] == pytest.approx(
            100 * f1_score(labels, pred, labels=classes, average="macro", zero_division=0), abs=1e-9)
        assert got["nll"] == pytest.approx(log_loss(labels, rows.numpy(), labels=classes), abs=1e-9)
        ece = multiclass_calibration_error(probs, torch.tensor(labels), num_classes=k,
                                           n_bins=scores.ECE_BINS, norm="l1")
        assert got["ece"] == pytest.approx(100 * float(ece), abs=1e-4)  # float32 sums in torchmetrics
    # A confidence of exactly 1.0 (wrong) in a bin of its own, 0.95 (right) in the top bin:
    # (|0 - 1| + |1 - 0.95|) / 2; one bin for both would give |0.5 - 0.975| = 47.5 %.
    edge = torch.tensor([[0.0, 1.0, 0.0], [0.025, 0.95, 0.025]])
    assert scores.scores([0, 1], edge, 3)["ece"] == pytest.approx(52.5, abs=1e-4)
    assert 100 * float(multiclass_calibration_error(edge, torch.tensor([0, 1]), num_classes=3,
                                                    n_bins=scores.ECE_BINS)) == pytest.approx(52.5, abs=1e-4)


def test_ece_is_near_zero_when_calibrated_and_the_gap_when_overconfident():
    rng = np.random.default_rng(0)
    n, k = 20_000, 4
    confidence = rng.uniform(0.3, 1.0, n)
    correct = rng.uniform(size=n) < confidence  # calibrated: right with the stated probability
    labels = rng.integers(0, k, n)
    top = np.where(correct, labels, (labels + 1) % k)
    probs = np.tile(((1 - confidence) / (k - 1))[:, None], (1, k))
    probs[np.arange(n), top] = confidence
    assert scores.scores(labels, probs, k)["ece"] < 1.5

    over = np.full((n, k), 0.1 / (k - 1))
    hits = rng.uniform(size=n) < 0.6  # says 90 %, right 60 % of the time
    over[np.arange(n), np.where(hits, labels, (labels + 1) % k)] = 0.9
    assert scores.scores(labels, over, k)["ece"] == pytest.approx(30.0, abs=1.5)


def _runs(effect: float, seeds: int, rng: np.random.Generator, sd: float = 2.0) -> pd.DataFrame:
    """Per-run rows of two modes on one split: a run effect shared by the pair, plus noise."""
    rows = []
    for seed in range(seeds):
        shared = rng.normal(70, 3)
        for mode, shift in (("freeze_none", 0.0), ("freeze_patch", effect)):
            rows.append({"model": "m", "recipe": "fixed", "lr_source": "fixed", "freeze_mode": mode,
                         "seed": seed, "fold": 0, "repeat": 0,
                         "test_macro_f1": shared + shift + rng.normal(0, sd)})
    return pd.DataFrame(rows)


def test_the_paired_score_interval_covers_a_planted_difference_at_its_level():
    rng = np.random.default_rng(1)
    covered = [(lambda r: r["low"] <= 4.0 <= r["high"])(
        inference.compare_scores(_runs(4.0, 6, rng), "freeze_none", "test_macro_f1").iloc[0])
        for _ in range(400)]
    assert 0.92 <= np.mean(covered) <= 0.98


def test_score_verdicts_read_the_scores_direction():
    rng = np.random.default_rng(2)
    runs = _runs(-15.0, 8, rng, sd=0.5)
    runs["test_ece"] = runs["test_macro_f1"]  # the same drop: worse for F1, better for calibration error

    table = evaluation.score_differences(runs, "freeze_none", 0.95, compare.SCORE_COLUMNS).set_index(
        ["score", "freeze_mode"])

    assert table.loc[("test_macro_f1", "freeze_patch"), "verdict"] == "worse"
    assert table.loc[("test_ece", "freeze_patch"), "verdict"] == "better"
    assert math.isnan(table.loc[("test_ece", "freeze_none"), "estimate"])


def test_compare_writes_the_scores_to_the_csv_and_a_report_section(tmp_path):
    rng = np.random.default_rng(3)
    runs = _runs(2.0, 4, rng).assign(test_acc=lambda d: d["test_macro_f1"], best_val_acc=70.0, lr=1e-3,
                                     frozen_blocks=0, trainable_share=1.0, cell=0,
                                     run_id=lambda d: [f"r{i}" for i in range(len(d))])
    runs["test_nll"], runs["test_ece"] = rng.uniform(0.5, 1.0, len(runs)), rng.uniform(2, 8, len(runs))

    summary = compare.write_outputs(runs, tmp_path, "freeze_none", 0.95, margin=1.0)

    row = summary.set_index("freeze_mode").loc["freeze_patch"]
    for score in compare.SCORE_COLUMNS:
        assert row[f"{score}_low"] < row[f"{score}_estimate"] < row[f"{score}_high"]
    assert set(pd.read_csv(tmp_path / compare.NAMES["csv"]).columns) >= {"test_nll_mean", "test_ece_verdict"}
    markdown = (tmp_path / compare.NAMES["md"]).read_text()
    assert "### Scores beyond accuracy" in markdown and "15 equal-width bins" in markdown
    main = markdown.split("### Scores beyond accuracy")[0]
    assert "macro_f1" not in main  # the main table stays accuracy


def test_every_logged_metric_has_a_section_and_maps_back_to_its_flat_name():
    probs = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    pred = Prediction(["a", "b"], torch.tensor([0, 1]), torch.tensor([0, 0]), probs)
    result = Result(50.0, 0.9, 60.0, 1, 10, 100, 1.0, predictions={"test": pred, "val": pred})
    flat = {**train_stage.summary_metrics(result, "freeze_none", "vit_demo"),
            **dict.fromkeys(("train_loss", "train_acc", "val_loss", "val_acc", "lr"), 0.0),
            "weight_change.block_03": 0.1, "cka.block_03": 0.9, "test_acc_blues": 50.0}

    named = {tracking.metric_name(k): k for k in flat}

    assert {n.split("/")[0] for n in named} == {"curves", "scores", "model", "cost", "diagnostics"}
    assert tracking.metric_name("cka.block_03") == "diagnostics/cka/block_03"
    assert tracking.metric_name("test_nll") == "scores/test_nll"
    assert {tracking.flat_name(n): k for n, k in named.items()} == {k: k for k in flat}
    assert tracking.flat_name("test_acc") == "test_acc"  # a run logged before the sections
    with pytest.raises(ValueError, match="no section"):
        tracking.metric_name("unplaced")

"""The non-deep floor: logistic regression on per-mel-band statistics, in the train stage's format."""

import numpy as np
import pandas as pd
import pytest
import torch

from transfer_freezing import config
from transfer_freezing.data import features
from transfer_freezing.data.inputs import Split
from transfer_freezing.errors import UserError
from transfer_freezing.study import baseline

CLASSES = ["blues", "jazz", "metal", "pop"]
SHIFT = 0.08  # per pixel a faint shift under uniform noise (sd 0.29): a band mean sees it


def _split(n_per_class: int, seed: int, dtype=torch.float16, size: int = 32) -> Split:
    """Noise images whose class raises the energy of its own group of mel bands (rows)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), n_per_class)
    images = rng.uniform(0.0, 1.0, (len(labels), size, size))
    band = size // len(CLASSES)
    for i, label in enumerate(labels):
        images[i, label * band:(label + 1) * band] += SHIFT
    images /= images.max()
    stored = torch.from_numpy((images * 255).astype(np.uint8)) if dtype == torch.uint8 \
        else torch.from_numpy(images).to(dtype)
    return Split(stored, torch.from_numpy(labels), [f"s{seed}-{i:03d}" for i in range(len(labels))])


def _splits(dtype=torch.float16) -> dict[str, Split]:
    return {"train": _split(20, 1, dtype), "val": _split(10, 2, dtype), "test": _split(10, 3, dtype)}


def test_band_statistics_are_mean_std_and_movement_per_band():
    images = torch.tensor([[[0.0, 1.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]])  # 2 bands, 4 frames
    stats = baseline.band_statistics(images)
    assert stats.shape == (1, 6)
    np.testing.assert_allclose(stats[0], [0.5, 0.5, 0.5, 0.0, 1.0, 0.0])
    as_bytes = baseline.band_statistics((images * 255).to(torch.uint8))
    np.testing.assert_allclose(as_bytes, stats, atol=1 / 255)  # bytes: 0.5 -> 127


@pytest.mark.parametrize("dtype", [torch.float16, torch.uint8])
def test_baseline_beats_chance_by_a_wide_margin_and_writes_the_train_stage_format(dtype):
    table, metrics = baseline.fit_baseline(_splits(dtype), CLASSES, seed=0)
    assert metrics["test_acc"] >= 80.0 and metrics["val_acc"] >= 80.0  # chance: 25 %
    assert list(table.columns) == ["split", "clip_id", "label", "pred", "correct",
                                   *(f"p_{c}" for c in CLASSES)]
    assert table["split"].tolist() == ["val"] * 40 + ["test"] * 40
    test = table[table["split"] == "test"]
    assert 100 * test["correct"].mean() == pytest.approx(metrics["test_acc"])
    assert (test["label"] == np.repeat(CLASSES, 10)).all()
    np.testing.assert_allclose(table.filter(regex="^p_").sum(axis=1), 1.0, atol=1e-5)
    by_c = metrics["val_acc_by_C"]
    assert set(by_c) == set(baseline.C_GRID)
    assert metrics["C"] == min(c for c in by_c if by_c[c] == max(by_c.values()))  # ties: stronger L2
    assert metrics["val_acc"] == by_c[metrics["C"]]
    assert metrics["n_features"] == 3 * 32


def test_baseline_is_deterministic_for_a_seed():
    first, m1 = baseline.fit_baseline(_splits(), CLASSES, seed=3)
    again, m2 = baseline.fit_baseline(_splits(), CLASSES, seed=3)
    pd.testing.assert_frame_equal(first, again)
    assert m1 == m2


def test_a_class_missing_from_train_gets_probability_zero():
    splits = _splits()
    keep = splits["train"].labels != 3
    splits["train"] = Split(splits["train"].images[keep], splits["train"].labels[keep],
                            [c for c, k in zip(splits["train"].clip_ids, keep.tolist(), strict=True) if k])
    table, _ = baseline.fit_baseline(splits, CLASSES)
    assert (table["p_pop"] == 0).all() and "pop" not in set(table["pred"])


def test_missing_splits_fail_in_one_line():
    with pytest.raises(UserError, match="missing or empty: test"):
        baseline.fit_baseline({k: v for k, v in _splits().items() if k != "test"}, CLASSES)


def test_baseline_on_the_tiny_project(tiny):
    store = features.Store.from_params(config.load("params.yaml"))
    table, metrics = baseline.fit_cell(store, cell=0)
    cell = store.load_cell(0)
    classes = store.read_meta()["classes"]
    assert table["clip_id"].tolist() == cell["val"].clip_ids + cell["test"].clip_ids
    assert list(table.columns[5:]) == [f"p_{c}" for c in classes]
    assert metrics["test_acc"] > 100 / len(classes)  # the synthetic corpus is learnable

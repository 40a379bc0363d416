"""The spectrogram recipe, the split schemes and the feature arrays on disk."""

import json

import librosa
import numpy as np
import pandas as pd
import pytest
import torch

from transfer_freezing import config
from transfer_freezing.data import features, splits
from transfer_freezing.errors import UserError

from conftest import write_params


def _chirp(sr: int = 22050, seconds: float = 3.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)).astype(
        np.float32
    )


@pytest.mark.slow
def test_mel_spectrogram_agrees_with_librosa():
    wave = _chirp()
    recipe = features.Recipe(22050, 2048, 512, 128, "log1p", 224)
    ours = recipe.mel()(torch.from_numpy(wave)).numpy()
    theirs = librosa.feature.melspectrogram(y=wave, sr=22050, n_fft=2048, hop_length=512, n_mels=128)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-5 * theirs.max())


def test_spectrogram_image_is_square_and_min_max_scaled():
    recipe = features.Recipe(22050, 2048, 512, 128, "log1p", 64)
    img = features.spectrogram_image(torch.from_numpy(_chirp()), recipe)
    assert img.shape == (64, 64)
    assert img.min().item() == 0.0 and abs(img.max().item() - 1.0) < 1e-6


def test_model_input_repeats_the_channel_and_normalises():
    images = torch.full((2, 8, 8), 0.5, dtype=torch.float16)
    x = features.to_model_input(images)
    assert x.shape == (2, 3, 8, 8)
    expected = (0.5 - torch.tensor(features.IMAGENET_MEAN)) / torch.tensor(features.IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 0, 0], expected)


def _manifest(n_per_class: int = 10, genres=("blues", "jazz", "rock")) -> pd.DataFrame:
    rows = [{"clip_id": f"{g}.{i:05d}", "genre": g, "status": "ok"}
            for g in genres for i in range(n_per_class)]
    return pd.DataFrame(rows)


def test_stratified_split_is_80_10_10_per_class_and_fixed(tmp_path):
    p = config.load(write_params(tmp_path, **{"split.scheme": "stratified"}))
    table, _ = splits.make_split(_manifest(), splits.SplitConfig.from_params(p))
    counts = table.groupby(["split", "genre"]).size().unstack()
    assert (counts.loc["train"] == 8).all() and (counts.loc["test"] == 1).all()
    again, _ = splits.make_split(_manifest(), splits.SplitConfig.from_params(p))
    pd.testing.assert_frame_equal(table, again)
    seed2 = config.load(tmp_path / "params.yaml", ["split.seed=2"])
    other, _ = splits.make_split(_manifest(), splits.SplitConfig.from_params(seed2))
    assert not table.equals(other)


def test_filtered_split_uses_torchaudio_lists_and_drops_missing_clips(tmp_path):
    from torchaudio.datasets import gtzan

    p = config.load(write_params(tmp_path), ["data.source=gtzan", "data.path=x", "split.scheme=filtered"])
    ids = sorted(set(gtzan.filtered_train + gtzan.filtered_valid + gtzan.filtered_test) - {"jazz.00054"})
    manifest = pd.DataFrame({"clip_id": ids, "genre": [i.split(".")[0] for i in ids], "status": "ok"})
    table, notes = splits.make_split(manifest, splits.SplitConfig.from_params(p))
    sizes = table["split"].value_counts()
    assert sizes["train"] + sizes["val"] + sizes["test"] == 443 + 197 + 290 - 1
    assert any("jazz.00054" in n for n in notes)


def test_features_stage_writes_arrays_labels_and_meta(tiny_built):
    # The tiny project uses the demo's 3-fold split: every clip's image once, plus the fold table.
    meta = json.loads((tiny_built / "data/features/meta.json").read_text())
    clips = np.load(tiny_built / "data/features/clips.npy", mmap_mode="r")
    assert clips.dtype == np.float16 and clips.shape[1:] == (32, 32)
    assert meta["splits"]["clips"]["n"] == len(clips) == 60 and meta["cells"] == 3
    rows = pd.read_csv(tiny_built / "data/features/clips.csv")
    assert list(rows.columns) == ["clip_id", "genre", "label"]
    split = pd.read_csv(tiny_built / "data/split.csv")
    assert split["fold"].value_counts().to_dict() == {0: 20, 1: 20, 2: 20}


def test_single_split_features_keep_one_array_per_split(tmp_path, monkeypatch):
    from transfer_freezing.data import corpus

    write_params(tmp_path, **{"split.scheme": "stratified"})
    monkeypatch.chdir(tmp_path)
    p = config.load("params.yaml")
    corpus.materialise(p)
    meta = features.build(p)
    train = np.load("data/features/train.npy", mmap_mode="r")
    assert meta["splits"]["train"]["n"] == len(train) == 40
    assert list(pd.read_csv("data/features/train.csv").columns) == ["clip_id", "genre", "split", "label"]
    split = pd.read_csv("data/split.csv")
    assert split["split"].value_counts().to_dict() == {"train": 40, "val": 10, "test": 10}


def test_features_built_with_other_params_are_detected(tiny, monkeypatch):
    p = config.load("params.yaml", ["features.n_mels=64"])
    with pytest.raises(UserError, match="re-run the features stage: dvc repro features"):
        features.Store.from_params(p).load("train")


def test_repeated_kfold_puts_every_clip_in_test_once_per_repeat():
    cfg = splits.SplitConfig(scheme="kfold", folds=5, repeats=3, seed=7)
    table, _ = splits.make_split(_manifest(n_per_class=10), cfg)
    assert len(table) == 30 * 3 and cfg.cells == 15
    for r in range(3):
        rows = table[table["repeat"] == r]
        assert sorted(rows["clip_id"]) == sorted(_manifest(10)["clip_id"])  # each clip in one fold
        assert (rows.groupby(["fold", "genre"]).size() == 2).all()  # stratified: 2 per class per fold
    assert not table[table["repeat"] == 0]["fold"].equals(table[table["repeat"] == 1]["fold"])
    tests = pd.concat([splits.cell_roles(table, c, 5).pipe(lambda s: s[s == "test"]) for c in range(15)])
    assert tests.index.value_counts().eq(3).all() and len(tests) == 90  # test once per repeat
    vals = pd.concat([splits.cell_roles(table, c, 5).pipe(lambda s: s[s == "val"]) for c in range(15)])
    assert vals.index.value_counts().eq(3).all()
    role = splits.cell_roles(table, 6, 5)  # repeat 1, fold 1: val is fold 2
    fold = table[table["repeat"] == 1].set_index("clip_id")["fold"]
    assert set(role[role == "test"].index) == set(fold[fold == 1].index)
    assert set(role[role == "val"].index) == set(fold[fold == 2].index)
    assert (role == "train").sum() == 18


def test_kfold_features_compute_each_clip_once_and_serve_every_cell(tmp_path, monkeypatch):
    from transfer_freezing.data import corpus

    write_params(tmp_path, **{"split.scheme": "kfold", "split.folds": 3, "split.repeats": 2})
    monkeypatch.chdir(tmp_path)
    p = config.load("params.yaml")
    corpus.materialise(p)
    meta = features.build(p)
    assert list(meta["splits"]) == ["clips"] and meta["splits"]["clips"]["n"] == 60 and meta["cells"] == 6
    store = features.Store.from_params(p)
    seen_test = []
    for cell in range(6):
        parts = store.load_cell(cell)
        ids = [set(parts[n].clip_ids) for n in ("train", "val", "test")]
        assert set().union(*ids) == set(pd.read_csv("data/features/clips.csv")["clip_id"])
        assert sum(len(i) for i in ids) == 60
        seen_test += parts["test"].clip_ids
    assert pd.Series(seen_test).value_counts().eq(2).all()
    assert list(pd.read_csv(p["split"]["out"]).columns) == ["repeat", "fold", "clip_id", "genre"]
    with pytest.raises(UserError, match="cell 6 is outside 0 .. 5"):
        store.load_cell(6)

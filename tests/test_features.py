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
    p = config.load(write_params(tmp_path))
    table, _ = splits.make_split(_manifest(), p)
    counts = table.groupby(["split", "genre"]).size().unstack()
    assert (counts.loc["train"] == 8).all() and (counts.loc["test"] == 1).all()
    again, _ = splits.make_split(_manifest(), p)
    pd.testing.assert_frame_equal(table, again)
    other, _ = splits.make_split(_manifest(), config.load(tmp_path / "params.yaml", ["split.seed=2"]))
    assert not table.equals(other)


def test_filtered_split_uses_torchaudio_lists_and_drops_missing_clips(tmp_path):
    from torchaudio.datasets import gtzan

    p = config.load(write_params(tmp_path), ["data.source=gtzan", "data.path=x", "split.scheme=filtered"])
    ids = sorted(set(gtzan.filtered_train + gtzan.filtered_valid + gtzan.filtered_test) - {"jazz.00054"})
    manifest = pd.DataFrame({"clip_id": ids, "genre": [i.split(".")[0] for i in ids], "status": "ok"})
    table, notes = splits.make_split(manifest, p)
    sizes = table["split"].value_counts()
    assert sizes["train"] + sizes["val"] + sizes["test"] == 443 + 197 + 290 - 1
    assert any("jazz.00054" in n for n in notes)


def test_features_stage_writes_arrays_labels_and_meta(tiny_built):
    meta = json.loads((tiny_built / "data/features/meta.json").read_text())
    train = np.load(tiny_built / "data/features/train.npy", mmap_mode="r")
    assert train.dtype == np.float16 and train.shape[1:] == (32, 32)
    assert meta["splits"]["train"]["n"] == len(train) == 40
    rows = pd.read_csv(tiny_built / "data/features/train.csv")
    assert list(rows.columns) == ["clip_id", "genre", "split", "label"]
    split = pd.read_csv(tiny_built / "data/split.csv")
    assert split["split"].value_counts().to_dict() == {"train": 40, "val": 10, "test": 10}


def test_features_built_with_other_params_are_detected(tiny, monkeypatch):
    p = config.load("params.yaml", ["features.n_mels=64"])
    with pytest.raises(UserError, match="re-run the features stage: dvc repro features"):
        features.load(p, "train")

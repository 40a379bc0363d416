import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torchaudio.datasets.gtzan import gtzan_genres

from transfer_freezing.data import synthetic

MANIFEST_COLUMNS = ["clip_id", "genre", "file", "source", "status", "reason", "sample_rate",
                    "channels", "seconds"]


def _file_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out = tmp_path_factory.mktemp("synthetic") / "raw"  # does not exist yet
    return out, synthetic.generate(out, clips_per_class=2, clip_seconds=1.5, seed=3)


def test_same_params_give_byte_identical_files(tmp_path: Path) -> None:
    synthetic.generate(tmp_path / "a", clips_per_class=2, clip_seconds=1.0, seed=7)

    synthetic.generate(tmp_path / "b", clips_per_class=2, clip_seconds=1.0, seed=7)

    assert _file_bytes(tmp_path / "a") == _file_bytes(tmp_path / "b")


def test_different_seed_gives_different_clips(tmp_path: Path) -> None:
    synthetic.generate(tmp_path / "a", clips_per_class=2, clip_seconds=1.0, seed=7)

    synthetic.generate(tmp_path / "b", clips_per_class=2, clip_seconds=1.0, seed=8)

    a, b = _file_bytes(tmp_path / "a"), _file_bytes(tmp_path / "b")
    wavs = [name for name in a if name.endswith(".wav")]
    assert len(wavs) == 20
    assert all(a[name] != b[name] for name in wavs)


def test_clip_does_not_depend_on_how_many_are_generated(tmp_path: Path) -> None:
    synthetic.generate(tmp_path / "one", clips_per_class=1, clip_seconds=1.0, seed=5)

    synthetic.generate(tmp_path / "three", clips_per_class=3, clip_seconds=1.0, seed=5)

    one, three = _file_bytes(tmp_path / "one"), _file_bytes(tmp_path / "three")
    assert all(three[name] == data for name, data in one.items() if name.endswith(".wav"))


def test_layout_has_one_folder_per_gtzan_genre_with_gtzan_names(
        corpus: tuple[Path, pd.DataFrame]) -> None:
    out, _ = corpus

    folders = sorted(p.name for p in out.iterdir() if p.is_dir())

    assert folders == sorted(gtzan_genres)
    for genre in folders:
        names = sorted(p.name for p in (out / genre).iterdir())
        assert names == [f"{genre}.00000.wav", f"{genre}.00001.wav"]
        assert all(re.fullmatch(rf"{genre}\.\d{{5}}\.wav", name) for name in names)


def test_clips_are_22050_hz_mono_16_bit_of_the_requested_length(
        corpus: tuple[Path, pd.DataFrame]) -> None:
    out, _ = corpus

    infos = [sf.info(p) for p in sorted(out.rglob("*.wav"))]

    assert len(infos) == 20
    assert {(i.samplerate, i.channels, i.frames, i.subtype) for i in infos} == {
        (22050, 1, round(1.5 * 22050), "PCM_16")}


def test_clips_are_peak_normalised_without_clipping(corpus: tuple[Path, pd.DataFrame]) -> None:
    out, _ = corpus

    peaks = [np.abs(sf.read(p)[0]).max() for p in sorted(out.rglob("*.wav"))]

    assert all(0.5 < peak < 0.99 for peak in peaks)


def test_manifest_lists_every_clip_with_the_agreed_columns(
        corpus: tuple[Path, pd.DataFrame]) -> None:
    out, returned = corpus

    written = pd.read_csv(out / "manifest.csv", keep_default_na=False)

    assert list(written.columns) == MANIFEST_COLUMNS
    assert list(returned.columns) == MANIFEST_COLUMNS
    assert len(written) == 20
    row = written.iloc[0]
    assert (row.clip_id, row.genre, row.file) == ("blues.00000", "blues", "blues/blues.00000.wav")
    assert set(written.source) == {"synthetic"} and set(written.status) == {"ok"}
    assert set(written.reason) == {""} and set(returned.reason) == {""}
    assert set(written.sample_rate) == {22050} and set(written.channels) == {1}
    assert np.allclose(written.seconds, 1.5)
    assert all((out / f).is_file() for f in written.file)
    assert (written.clip_id + ".wav" == written.file.str.split("/").str[1]).all()


def _mean_log_mel(out: Path, files: pd.Series) -> np.ndarray:
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=22050, n_fft=2048, hop_length=512,
                                               n_mels=128)
    audio = torch.stack([torch.from_numpy(sf.read(out / f, dtype="float32")[0]) for f in files])
    return torch.log1p(mel(audio)).mean(dim=-1).numpy()


@pytest.mark.parametrize("seed", [0, 1])
def test_genres_are_learnable_but_not_trivially(tmp_path: Path, seed: int) -> None:
    manifest = synthetic.generate(tmp_path, clips_per_class=30, clip_seconds=3.0, seed=seed)
    features = _mean_log_mel(tmp_path, manifest.file)
    x_train, x_test, y_train, y_test = train_test_split(
        features, manifest.genre, test_size=0.3, stratify=manifest.genre, random_state=0)

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = model.fit(x_train, y_train).score(x_test, y_test)

    assert 0.40 <= accuracy <= 0.90

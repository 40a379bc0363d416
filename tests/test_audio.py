"""Audio import: decoding, validation, GTZAN/folder scanning, manifest, atomic output, download."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from transfer_freezing.data import audio
from transfer_freezing.data.audio import GENRES, BadClip, decode, import_tree, safe_extract, scan
from transfer_freezing.errors import UserError

SR = 22050
CLIP_S = 2.0  # short clips keep the tests fast; GTZAN's real length is 30 s
LAYOUT_EXT = {"genres": "au", "genres_original": "wav", "Data/genres_original": "wav"}


def tone(seconds: float, sr: int = SR, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write(path: Path, data: np.ndarray, sr: int = SR, **kwargs: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, **kwargs)
    return path


def make_gtzan(root: Path, layout: str = "genres_original", per_genre: int = 3) -> Path:
    """A GTZAN-shaped tree under ``root/layout`` with the awkward files real copies have.

    3 clips of 2-3 s per genre, plus: a corrupt ``jazz.00054.wav`` (random bytes), a stereo
    44.1 kHz ``blues.00001`` (left 0.6 * tone, right silent), a 10 s ``rock.00002`` (cropped) and
    a 1.5 s ``pop.00002`` (padded). Returns the dataset folder.
    """
    base, ext = root / layout, LAYOUT_EXT[layout]
    for g in GENRES:
        for i in range(per_genre):
            write(base / g / f"{g}.{i:05d}.{ext}", tone(2.0 + 0.5 * i, freq=200.0 + 50 * i))
    left = tone(2.5, sr=44100, amp=0.6)
    write(base / "blues" / f"blues.00001.{ext}", np.stack([left, 0 * left], axis=1), sr=44100)
    write(base / "rock" / f"rock.00002.{ext}", tone(10.0))
    write(base / "pop" / f"pop.00002.{ext}", tone(1.5))
    (base / "jazz" / "jazz.00054.wav").write_bytes(np.random.default_rng(0).bytes(4096))
    return base


def audio_files(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*") if p.suffix.lower() in {".wav", ".au"}}


def import_gtzan(root: Path, out: Path) -> pd.DataFrame:
    return import_tree(root, out, "gtzan", clip_seconds=CLIP_S, min_seconds=1.0)


# --------------------------------------------------------------------------- GTZAN import


@pytest.mark.parametrize("layout", list(LAYOUT_EXT))
def test_import_gtzan_skips_exactly_the_corrupt_clip(tmp_path, capsys, layout):
    make_gtzan(tmp_path / "gtzan", layout)

    manifest = import_gtzan(tmp_path / "gtzan", tmp_path / "out")

    skipped = manifest[manifest["status"] == "skipped"]
    assert skipped["clip_id"].tolist() == ["jazz.00054"]
    assert skipped["reason"].tolist() == ["format not recognised"]
    line = "30 clips ok, 1 skipped: jazz.00054.wav (format not recognised)"
    assert line in capsys.readouterr().out.splitlines()


def test_moving_the_audio_tree_changes_no_byte_of_the_output(tmp_path):
    make_gtzan(tmp_path / "here" / "gtzan")
    import_gtzan(tmp_path / "here" / "gtzan", tmp_path / "out1")
    (tmp_path / "here").rename(tmp_path / "there")
    import_gtzan(tmp_path / "there" / "gtzan", tmp_path / "out2")

    first = {p.relative_to(tmp_path / "out1"): p.read_bytes() for p in (tmp_path / "out1").rglob("*")
             if p.is_file()}
    second = {p.relative_to(tmp_path / "out2"): p.read_bytes() for p in (tmp_path / "out2").rglob("*")
              if p.is_file()}
    assert first == second


def test_import_gtzan_manifest_lists_every_file(tmp_path):
    base = make_gtzan(tmp_path / "gtzan")

    manifest = import_gtzan(tmp_path / "gtzan", tmp_path / "out")

    on_disk = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    assert list(on_disk.columns) == audio.MANIFEST_COLUMNS
    root = tmp_path / "gtzan"
    assert set(on_disk["source"]) == {Path(f).relative_to(root).as_posix() for f in audio_files(base)}
    assert len(manifest) == len(on_disk) == 31
    ok = on_disk[on_disk["status"] == "ok"]
    assert all((tmp_path / "out" / f).is_file() for f in ok["file"])
    assert (ok["reason"] == "").all()


def test_import_accepts_the_dataset_folder_itself(tmp_path):
    base = make_gtzan(tmp_path / "gtzan", "genres")

    manifest = import_gtzan(base, tmp_path / "out")

    assert (manifest["status"] == "ok").sum() == 30


def test_import_writes_mono_clips_of_exact_length(tmp_path):
    make_gtzan(tmp_path / "gtzan")

    manifest = import_gtzan(tmp_path / "gtzan", tmp_path / "out")

    for rel in manifest.loc[manifest["status"] == "ok", "file"]:
        info = sf.info(tmp_path / "out" / rel)
        assert (info.samplerate, info.channels, info.frames) == (SR, 1, round(CLIP_S * SR))
        assert info.subtype == "PCM_16"


def test_import_downmixes_stereo_and_records_the_original(tmp_path):
    make_gtzan(tmp_path / "gtzan")

    manifest = import_gtzan(tmp_path / "gtzan", tmp_path / "out").set_index("clip_id")

    clip, sr = sf.read(tmp_path / "out" / "blues" / "blues.00001.wav")
    assert np.abs(clip).max() == pytest.approx(0.3, abs=0.01)  # mean of 0.6 * tone and silence
    assert (manifest.at["blues.00001", "channels"], manifest.at["blues.00001", "sample_rate"]) == (
        2,
        44100,
    )


def test_import_crops_long_clips_to_their_start_and_pads_short_ones(tmp_path):
    make_gtzan(tmp_path / "gtzan")

    manifest = import_gtzan(tmp_path / "gtzan", tmp_path / "out").set_index("clip_id")

    cropped, _ = sf.read(tmp_path / "out" / "rock" / "rock.00002.wav", dtype="float32")
    padded, _ = sf.read(tmp_path / "out" / "pop" / "pop.00002.wav", dtype="float32")
    assert manifest.at["rock.00002", "seconds"] == pytest.approx(10.0)
    np.testing.assert_allclose(cropped, tone(CLIP_S), atol=1e-3)
    assert manifest.at["pop.00002", "seconds"] == pytest.approx(1.5)
    np.testing.assert_allclose(padded[: round(1.5 * SR)], tone(1.5), atol=1e-3)
    assert not padded[round(1.5 * SR) :].any()


def test_import_fails_for_a_genre_without_readable_clips(tmp_path):
    base = make_gtzan(tmp_path / "gtzan")
    for f in (base / "jazz").glob("jazz.0000*.wav"):
        f.unlink()

    with pytest.raises(UserError, match=r"class 'jazz' has no readable clip in .*jazz"):
        import_gtzan(tmp_path / "gtzan", tmp_path / "out")


def test_import_failure_leaves_no_output(tmp_path):
    base = make_gtzan(tmp_path / "gtzan")
    for f in (base / "jazz").glob("jazz.0000*.wav"):
        f.unlink()

    with pytest.raises(UserError):
        import_gtzan(tmp_path / "gtzan", tmp_path / "data" / "raw")

    assert list((tmp_path / "data").iterdir()) == []


def test_import_failure_keeps_the_previous_output(tmp_path):
    make_gtzan(tmp_path / "gtzan")
    import_gtzan(tmp_path / "gtzan", tmp_path / "out")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))
    for f in (tmp_path / "gtzan" / "genres_original" / "jazz").glob("jazz.0000*.wav"):
        f.unlink()

    with pytest.raises(UserError):
        import_gtzan(tmp_path / "gtzan", tmp_path / "out")

    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*")) == before


def test_summary_names_the_first_few_skipped_files():
    manifest = pd.DataFrame({
        "status": ["ok"] + ["skipped"] * 5,
        "source": ["a/ok.wav"] + [f"a/bad{i}.wav" for i in range(5)],
        "reason": [""] + ["empty file"] * 5,
    })

    line = audio.summary(manifest)

    assert line == (
        "1 clips ok, 5 skipped: bad0.wav (empty file), bad1.wav (empty file), "
        "bad2.wav (empty file), …"
    )


# --------------------------------------------------------------------------- GTZAN scan rules


def test_scan_gtzan_ignores_an_extra_folder_with_a_note(tmp_path, capsys):
    base = make_gtzan(tmp_path / "gtzan")
    write(base / "spoken_word" / "spoken_word.00000.wav", tone(2.0))

    clips = scan(tmp_path / "gtzan", "gtzan")

    assert {c.genre for c in clips} == set(GENRES)
    assert "ignoring non-genre folder(s)" in capsys.readouterr().out


def test_scan_gtzan_requires_all_ten_genres(tmp_path):
    base = make_gtzan(tmp_path / "gtzan")
    for f in (base / "rock").iterdir():
        f.unlink()
    (base / "rock").rmdir()

    with pytest.raises(UserError, match="lacks genre folder.*rock"):
        scan(tmp_path / "gtzan", "gtzan")


def test_scan_gtzan_fails_for_an_empty_genre_folder(tmp_path):
    base = make_gtzan(tmp_path / "gtzan")
    for f in (base / "metal").iterdir():
        f.unlink()

    with pytest.raises(UserError, match=r"class 'metal' has no audio files in .*metal"):
        scan(tmp_path / "gtzan", "gtzan")


def test_scan_gtzan_skips_files_not_named_like_gtzan(tmp_path):
    base = make_gtzan(tmp_path / "gtzan")
    write(base / "blues" / "my_song.wav", tone(2.0))
    write(base / "blues" / "rock.00099.wav", tone(2.0))

    skips = {c.path.name: c.skip for c in scan(tmp_path / "gtzan", "gtzan") if c.skip}

    assert skips["my_song.wav"].startswith("name is not blues.NNNNN")
    assert skips["rock.00099.wav"].startswith("name is not blues.NNNNN")


def test_scan_without_genre_folders_says_what_was_expected(tmp_path):
    write(tmp_path / "music" / "song.wav", tone(1.0))

    with pytest.raises(UserError, match="no GTZAN genre folders in .*genres_original"):
        scan(tmp_path, "gtzan")


@pytest.mark.parametrize("source", ["gtzan", "folder"])
def test_scan_missing_path_raises_one_line(tmp_path, source):
    with pytest.raises(UserError, match="does not exist") as err:
        scan(tmp_path / "nowhere", source)

    assert "\n" not in str(err.value)
    assert str(tmp_path / "nowhere") in str(err.value)


# --------------------------------------------------------------------------- folder source


def test_import_folder_with_arbitrary_class_names(tmp_path):
    for cls in ("cats", "Dogs and wolves", "b1rds"):
        for i in range(2):
            write(tmp_path / "src" / cls / f"{cls}-{i}.flac", tone(1.5, freq=300 + 100 * i))

    manifest = import_tree(tmp_path / "src", tmp_path / "out", "folder", clip_seconds=1.0)

    assert sorted(set(manifest["genre"])) == ["Dogs and wolves", "b1rds", "cats"]
    assert (manifest["status"] == "ok").all()
    assert (tmp_path / "out" / "Dogs and wolves" / "Dogs and wolves-1.wav").is_file()


def test_import_folder_skips_empty_and_text_files_with_reasons(tmp_path):
    write(tmp_path / "src" / "a" / "good.wav", tone(1.5))
    (tmp_path / "src" / "a" / "empty.wav").touch()
    (tmp_path / "src" / "a" / "notes.wav").write_text("not audio at all\n" * 20)

    manifest = import_tree(tmp_path / "src", tmp_path / "out", "folder", clip_seconds=1.0)

    reasons = dict(zip(manifest["clip_id"], manifest["reason"], strict=True))
    assert reasons == {"empty": "empty file", "good": "", "notes": "format not recognised"}
    assert manifest.set_index("clip_id").loc[["empty", "notes"], "seconds"].isna().all()


def test_scan_folder_accepts_upper_case_extensions(tmp_path):
    write(tmp_path / "a" / "LOUD.WAV", tone(1.0))
    write(tmp_path / "a" / "quiet.Flac", tone(1.0))

    clips = scan(tmp_path, "folder")

    assert [c.clip_id for c in clips] == ["LOUD", "quiet"]


def test_scan_folder_ignores_hidden_and_non_audio_files(tmp_path):
    write(tmp_path / "a" / "x.wav", tone(1.0))
    write(tmp_path / "a" / ".hidden.wav", tone(1.0))
    write(tmp_path / ".cache" / "y.wav", tone(1.0))
    (tmp_path / "a" / "README.txt").write_text("hi")

    clips = scan(tmp_path, "folder")

    assert [(c.genre, c.clip_id) for c in clips] == [("a", "x")]


def test_scan_skips_duplicate_clip_ids_keeping_the_first(tmp_path):
    write(tmp_path / "a" / "x.wav", tone(1.0))
    write(tmp_path / "a" / "x.au", tone(1.0))

    clips = scan(tmp_path, "folder")

    assert [(c.path.name, c.skip.split(" (")[0]) for c in clips] == [
        ("x.au", ""),
        ("x.wav", "duplicate clip id"),
    ]


def test_scan_folder_without_class_folders_raises(tmp_path):
    write(tmp_path / "loose.wav", tone(1.0))

    with pytest.raises(UserError, match="no class folders in"):
        scan(tmp_path, "folder")


# --------------------------------------------------------------------------- decode


@pytest.mark.parametrize(("subtype", "atol"), [("PCM_U8", 1e-2), ("PCM_24", 1e-6), ("FLOAT", 0)])
def test_decode_reads_8_bit_24_bit_and_float_wav(tmp_path, subtype, atol):
    path = write(tmp_path / "x.wav", tone(1.0), subtype=subtype)

    clip = decode(path)

    assert clip.dtype == np.float32
    np.testing.assert_allclose(clip, tone(1.0), atol=atol)


@pytest.mark.parametrize("rate", [8000, 48000])
def test_decode_resamples_other_rates(tmp_path, rate):
    path = write(tmp_path / "x.wav", tone(1.0, sr=rate), sr=rate)

    clip = decode(path)

    assert len(clip) == SR
    peak_hz = np.argmax(np.abs(np.fft.rfft(clip))) * SR / len(clip)
    assert peak_hz == pytest.approx(440.0, abs=2.0)


def test_decode_pads_and_crops_to_clip_samples(tmp_path):
    path = write(tmp_path / "x.wav", tone(1.0))

    assert len(decode(path, clip_samples=SR // 2)) == SR // 2
    assert len(decode(path, clip_samples=2 * SR)) == 2 * SR


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_FILES = {
    "empty file": lambda d: write_bytes(d / "e.wav", b""),
    "format not recognised": lambda d: write_bytes(d / "t.wav", b"just some text\n" * 40),
    "not audio: no header": lambda d: write_bytes(d / "r.au", b"header-less text\n" * 40),
    "no samples": lambda d: write(d / "z.wav", np.zeros(0, np.float32)),
    "too short: 0.4 s < 1.0 s": lambda d: write(d / "s.wav", tone(0.4)),
}


@pytest.mark.parametrize("reason", list(BAD_FILES))
def test_decode_rejects_bad_files_with_a_reason(tmp_path, reason):
    path = BAD_FILES[reason](tmp_path)

    with pytest.raises(BadClip) as err:
        decode(path, min_samples=SR)

    assert err.value.reason == reason


# --------------------------------------------------------------------------- archives


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_safe_extract_refuses_a_member_outside_dest(tmp_path):
    archive = make_tar(tmp_path / "evil.tar.gz", {"genres/ok.txt": b"ok", "../evil.txt": b"pwned"})
    (tmp_path / "dest").mkdir()

    with pytest.raises(UserError, match="refusing to extract .*'../evil.txt'"):
        safe_extract(archive, tmp_path / "dest")

    assert not (tmp_path / "evil.txt").exists()
    assert list((tmp_path / "dest").iterdir()) == []

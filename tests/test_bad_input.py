"""Issue 7's bad-input table: each row one test.

A user error ends as exactly one stderr line ``tfreeze <stage>: error: <what, where, what is
allowed>``, exit code 2, no traceback (unless ``--debug``), and no output added or changed.
Accepted oddities (odd WAV formats, rates, stereo, short clips) are converted and listed in the
manifest instead.

Rows covered in other files, not repeated here:
- audio: undecodable / zero-byte / text-named-.wav files are skipped with a reason
  (test_audio: test_import_gtzan_skips_exactly_the_corrupt_clip,
  test_import_folder_skips_empty_and_text_files_with_reasons, test_decode_rejects_bad_files_...);
  8-bit / 24-bit / float WAV (test_decode_reads_8_bit_24_bit_and_float_wav); 8 and 48 kHz
  (test_decode_resamples_other_rates); stereo (test_import_downmixes_stereo_and_records_...);
  extra non-genre folder: ignored with a note (test_scan_gtzan_ignores_an_extra_folder_with_a_note);
  upper-case extensions, folder source (test_scan_folder_accepts_upper_case_extensions);
  duplicate clip ids in one class (test_scan_skips_duplicate_clip_ids_keeping_the_first).
- params: every bad value as a ``config.load`` row (test_config: test_bad_values_give_one_line,
  test_unknown_key_in_file_is_rejected); ``tfreeze train`` with epochs 0 (test_config:
  test_cli_bad_input_is_one_line_and_exit_2) and an unknown ``--freeze`` (test_training).
- environment: weights missing offline, named file and folder (test_models:
  test_missing_weights_offline_names_file_and_folder); another architecture's weights
  (test_models: test_weights_of_another_architecture_are_refused); MLflow unreachable for train and
  sweep, Optuna storage unreachable with the password masked (test_training, test_sweep:
  test_bad_input_is_one_line_before_any_work); features built with other params
  (test_features: test_features_built_with_other_params_are_detected).
- security: ``../`` member in the download archive (test_audio:
  test_safe_extract_refuses_a_member_outside_dest).
"""

from __future__ import annotations

import ast
import errno
import hashlib
import io
import os
import socket
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from transfer_freezing import atomic, cli, config
from transfer_freezing.data import audio, features
from transfer_freezing.errors import UserError
from transfer_freezing.model import registry as models
from transfer_freezing.study import ui
from transfer_freezing.train import tracking

from conftest import REPO, write_params
from services import free_port

SR = 22050


# --------------------------------------------------------------------------- helpers


def tone(seconds: float, sr: int = SR, freq: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_wav(path: Path, data: np.ndarray, sr: int = SR, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data, sr, **kwargs)
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a digest of its bytes (folders: 'dir')."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def one_line(text: str) -> str:
    assert text.count("\n") == 1 and text.endswith("\n"), f"expected one line, got:\n{text}"
    return text.rstrip("\n")


def gtzan_tree(root: Path, empty: str = "", undecodable: str = "") -> Path:
    """10 genre folders with one 1.2 s clip each; ``empty`` has no file, ``undecodable`` only text."""
    for g in audio.GENRES:
        folder = root / "genres" / g
        folder.mkdir(parents=True)
        if g == undecodable:
            (folder / f"{g}.00000.wav").write_text("this is not audio\n" * 20)
        elif g != empty:
            write_wav(folder / f"{g}.00000.wav", tone(1.2, freq=200 + 40 * audio.GENRES.index(g)))
    return root


# --------------------------------------------------------------------------- the CLI table

CELL = ["--model", "vit_demo", "--freeze", "freeze_none", "--seed", "1"]
RESNET50 = ["grid.models=[resnet50]", "grid.freeze_modes=[freeze_none]",
            "grid.tuned_models=[resnet50]", "grid.tuned_freeze_modes=[freeze_none]"]


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def typo_in_file(proj: Path, tmp: Path) -> list[str]:
    write_params(proj, **{"train.epoch": 3})
    return ["train"]


def gtzan(**tree) -> callable:
    def setup(proj: Path, tmp: Path) -> list[str]:
        return ["data", *sets("data.source=gtzan", f"data.path={gtzan_tree(tmp / 'g', **tree)}")]
    return setup


def argv(*args: str) -> callable:
    return lambda proj, tmp: list(args)


def grouped(keep: int | None = None, text: str | None = None) -> callable:
    """``features`` with split.groups: a CSV giving the first ``keep`` clips of the corpus a group
    (None: all of them), or the file ``text``."""
    def setup(proj: Path, tmp: Path) -> list[str]:
        path = tmp / "groups.csv"
        if text is not None:
            path.write_text(text)
        else:
            ids = pd.read_csv(proj / "data/raw/manifest.csv")["clip_id"].tolist()[:keep]
            rows = pd.DataFrame({"clip_id": ids, "group": [f"a{i // 2}" for i in range(len(ids))]})
            rows.to_csv(path, index=False)
        return ["features", *sets(f"split.groups={path}")]
    return setup


CLI_ROWS = [
    # params
    pytest.param(typo_in_file, "params.yaml: unknown key 'train.epoch' (did you mean 'train.epochs'?)",
                 id="params-unknown-key-in-file"),
    pytest.param(argv("train", *sets("grid.models=[vit_z]")),
                 "unknown model 'vit_z'; valid: vit_b_16, deit_b_16, vit_demo, resnet50, resnet_demo",
                 id="params-unknown-model"),
    pytest.param(argv("sweep", "--model", "vit_demo", "--freeze", "freeze_all"),
                 "unknown freeze mode 'freeze_all' for vit_demo; valid: freeze_none",
                 id="params-unknown-freeze-mode"),
    pytest.param(argv("features", *sets("split.scheme=random")),
                 "split.scheme = 'random' is not allowed; expected one of stratified, filtered, kfold",
                 id="params-unknown-split-scheme"),
    pytest.param(argv("features", *sets("split.test=0")),
                 "split.test = 0.0 is not allowed; expected a number in (0, 1]",
                 id="params-fraction-zero"),
    pytest.param(argv("compare", *sets("compare.confidence=1.5")),
                 "compare.confidence = 1.5 is not allowed; expected a number in (0, 1]",
                 id="params-fraction-above-one"),
    pytest.param(argv("train", *sets("grid.seeds=[]")),
                 "grid.seeds = [] is not allowed; expected a non-empty list, each item an integer >= 0",
                 id="params-empty-seed-list"),
    pytest.param(argv("train", *sets("train.lr=-0.1")),
                 "train.lr = -0.1 is not allowed; expected a number > 0",
                 id="params-negative-lr"),
    pytest.param(argv("train", *sets("train.lr=sweep")),
                 "train.lr = 'sweep' is retired: tuned-lr cells are their own stage (train_tuned",
                 id="params-retired-lr-sweep"),
    pytest.param(argv("sweep", *sets("sweep.seeds=[1, 101]")),
                 "sweep.seeds = [1, 101] shares [1] with grid.seeds = [1, 2]; a sweep trial must not "
                 "replay a training run: use other seeds", id="params-sweep-seed-is-a-training-seed"),
    pytest.param(argv("sweep", *sets("sweep.lr_low=0")),
                 "sweep.lr_low = 0.0 is not allowed; expected a number > 0", id="params-zero-lr-low"),
    pytest.param(argv("sweep", *sets("sweep.epochs=0")),
                 "sweep.epochs = 0 is not allowed; expected an integer >= 1", id="params-zero-epochs"),
    # params: duplicates in a grid axis (each would train the same cells twice)
    pytest.param(argv("train", *sets("grid.seeds=[1,1]")),
                 "grid.seeds = [1, 1] lists 1 more than once; list each once", id="params-duplicate-seed"),
    pytest.param(argv("train", *sets("grid.folds=[0, 0]")),
                 "grid.folds = [0, 0] lists 0 more than once", id="params-duplicate-fold"),
    pytest.param(argv("train", *sets("grid.freeze_modes=[freeze_none, freeze_patch_0_11, freeze_none]")),
                 "grid.freeze_modes = ['freeze_none', 'freeze_patch_0_11', 'freeze_none'] lists "
                 "'freeze_none' more than once", id="params-duplicate-freeze-mode"),
    pytest.param(argv("train", *sets("grid.models=[vit_demo, vit_demo]")),
                 "grid.models = ['vit_demo', 'vit_demo'] lists 'vit_demo' more than once",
                 id="params-duplicate-model"),
    pytest.param(argv("sweep", *sets("sweep.seeds=[101, 102, 101]")),
                 "sweep.seeds = [101, 102, 101] lists 101 more than once", id="params-duplicate-sweep-seed"),
    pytest.param(argv("sweep", *sets("grid.tuned_freeze_modes=[freeze_none, freeze_none]")),
                 "grid.tuned_freeze_modes = ['freeze_none', 'freeze_none'] lists 'freeze_none' more "
                 "than once",
                 id="params-duplicate-sweep-mode"),
    pytest.param(argv("train", *sets("grid.cells=[vit_demo/freeze_patch_0_5, vit_demo/freeze_patch_0_5]")),
                 "grid.cells has 'vit_demo/freeze_patch_0_5' twice; list each cell once",
                 id="params-duplicate-cell"),
    pytest.param(argv("train", "--jobs", "-2", "--address", "127.0.0.1:1"),
                 "--jobs -2: expected a number of runs at once >= 1", id="cli-negative-jobs"),
    pytest.param(argv("sweep", "--workers", "0", "--address", "127.0.0.1:1"),
                 "--workers 0: expected a number of sweep workers at once >= 1", id="cli-zero-workers"),
    # params: sizes that would exhaust memory, refused before any work
    pytest.param(argv("features", *sets("features.image_size=100000")),
                 "features.image_size = 100000 is not allowed; expected an integer in 1 .. 1,024 (every run "
                 "holds the feature arrays whole", id="params-huge-image-size"),
    pytest.param(argv("features", *sets("data.clip_seconds=30", "features.hop_length=1")),
                 "features.hop_length = 1 makes one clip's STFT 5.1 GiB (1025 bins x 661,501 frames x 8 "
                 "bytes), over the 1 GiB a feature worker may use; allowed: features.hop_length >= 6",
                 id="params-hop-of-one"),
    pytest.param(argv("features", *sets("features.hop_length=4096")),
                 "features.hop_length = 4096 exceeds features.n_fft = 2048", id="params-hop-beyond-window"),
    pytest.param(argv("features", *sets("features.n_mels=2000")),
                 "features.n_mels = 2000 exceeds the 1025 frequency bins of features.n_fft = 2048",
                 id="params-more-mels-than-bins"),
    pytest.param(argv("features", *sets("features.n_fft=100000000")),
                 "features.n_fft = 100000000 is longer than a clip (44,100 samples", id="params-huge-n-fft"),
    pytest.param(argv("data", *sets("data.clip_seconds=1e6")),
                 "data.clip_seconds = 1000000.0 is not allowed; expected a number in (0, 600]",
                 id="params-huge-clip"),
    pytest.param(argv("data", *sets("data.sample_rate=10000000")),
                 "data.sample_rate = 10000000 is not allowed; expected an integer in 1 .. 192,000",
                 id="params-huge-sample-rate"),
    pytest.param(argv("data", *sets("data.synthetic_clips_per_class=100000000")),
                 "data.synthetic_clips_per_class = 100000000 is not allowed; expected an integer in "
                 "1 .. 10,000",
                 id="params-huge-synthetic-corpus"),
    pytest.param(argv("features", *sets("runtime.feature_workers=100000")),
                 "runtime.feature_workers = 100000 is not allowed; expected an integer in 0 .. 256",
                 id="params-huge-worker-count"),
    pytest.param(argv("features", *sets("split.repeats=1000000")),
                 "split.repeats = 1000000 is not allowed; expected an integer in 1 .. 100",
                 id="params-huge-repeats"),
    pytest.param(argv("train", *CELL, *sets("train.batch_size=500")),
                 "train.batch_size = 500 is larger than the train split (20 clips); lower it",
                 id="params-batch-larger-than-train-split"),
    pytest.param(grouped(keep=55), "groups.csv: 5 of 60 clips have no group: ",
                 id="params-clips-without-a-group"),
    pytest.param(grouped(text="clip,artist\nblues.00000,x\n"),
                 "groups.csv: columns ['clip', 'artist']; expected exactly clip_id,group",
                 id="params-malformed-groups-file"),
    pytest.param(argv("features", *sets("split.groups=no/such.csv")),
                 "split.groups = no/such.csv: file not found; expected a CSV with header clip_id,group",
                 id="params-missing-groups-file"),
    # environment
    pytest.param(argv("train", *CELL, *sets("features.n_mels=64")),
                 "features in data/features were built with other data/split/features params than "
                 "params.yaml now holds; re-run the features stage: dvc repro features",
                 id="env-features-built-with-other-params"),
    pytest.param(argv("train", *sets("train.weights=imagenet")),
                 "train.weights = 'imagenet' but model 'vit_demo' has no pretrained weights; use "
                 "train.weights = none, a state-dict file, or a model among vit_b_16, deit_b_16, resnet50",
                 id="env-imagenet-weights-for-a-demo-model"),
    pytest.param(argv("train", *sets(*RESNET50, "train.weights=imagenet")),
                 "resnet50's weights IMAGENET1K_V2 expect 224x224 inputs: set "
                 "features.image_size = 224 (got 32; inputs are not resized)",
                 id="env-imagenet-weights-at-another-image-size"),
    # audio
    pytest.param(gtzan(empty="metal"), "class 'metal' has no audio files in ",
                 id="audio-genre-folder-without-clips"),
    pytest.param(gtzan(undecodable="jazz"),
                 "class 'jazz' has no readable clip in ", id="audio-genre-with-only-undecodable-clips"),
    pytest.param(argv("data", *sets("data.source=folder", "data.path=no/such/folder")),
                 "audio folder no/such/folder does not exist: expected a folder-per-class tree",
                 id="audio-missing-folder"),
]


@pytest.mark.parametrize(("setup", "message"), CLI_ROWS)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tiny, tmp_path, capsys, setup, message):
    args = setup(tiny, tmp_path)
    before = snapshot(tiny)

    code = cli.main(args)

    err = one_line(capsys.readouterr().err)
    assert code == 2
    assert err.startswith(f"tfreeze {args[0]}: error: ") and message in err
    assert snapshot(tiny) == before


@pytest.mark.parametrize("address", ["127.0.0.1:{port}", "ray://127.0.0.1:{port}", "127.0.0.1"])
def test_an_address_without_a_ray_cluster_is_one_line_within_seconds(tiny, capsys, address):
    given = address.format(port=free_port())
    before = snapshot(tiny)
    start = time.monotonic()

    code = cli.main(["train", "--jobs", "2", "--address", given])

    err = one_line(capsys.readouterr().err)
    assert code == 2 and time.monotonic() - start < 15
    assert (f"no Ray cluster at {given} (connection refused within 5 s)" in err if ":" in given
            else "expected HOST:PORT of a Ray cluster's head" in err)
    assert snapshot(tiny) == before


def test_feature_arrays_larger_than_memory_are_refused_before_any_work(tiny, capsys, monkeypatch):
    # 60 clips at 32 x 32 float16 are 122,880 bytes: on a machine with 100,000 the largest image
    # that fits is isqrt(100000 // (60 * 2)) = 28 pixels a side.
    monkeypatch.setattr(features, "memory_bytes", lambda: 100_000)
    before = snapshot(tiny)

    code = cli.main(["features"])

    err = one_line(capsys.readouterr().err)
    assert code == 2
    assert ("features.image_size = 32: the feature arrays of 60 clips would take 120.0 KiB (32² x 2 bytes "
            "each, float16), more than this machine's 97.7 KiB of memory; allowed here: "
            "features.image_size <= 28 (or features.dtype = uint8)") in err
    assert snapshot(tiny) == before


def test_undecodable_clip_is_named_with_its_reason(tiny, tmp_path, capsys):
    cli.main(gtzan(undecodable="jazz")(tiny, tmp_path))

    err = capsys.readouterr().err

    assert "jazz.00000.wav: format not recognised" in err


@pytest.mark.parametrize("command", ["train", "ui"])
def test_unreachable_tracking_server_is_one_line_with_the_password_masked(tiny, capsys, monkeypatch,
                                                                          command):
    uri = f"http://alice:s3cret@127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    args = [command, *CELL] if command == "train" else [command]
    before = snapshot(tiny)

    code = cli.main(args)

    err = one_line(capsys.readouterr().err)
    assert code == 2
    assert f"MLflow tracking server {tracking.mask(uri)} is unreachable" in err
    assert "s3cret" not in err and "alice:***@" in err
    # train makes the cell's (empty) folder before it connects: no file is written
    added = {k for k, v in snapshot(tiny).items() if k not in before}
    assert all(snapshot(tiny)[k] == "dir" for k in added)


@pytest.mark.parametrize(("error", "message"), [
    (UserError("first\nsecond"), "tfreeze models: error: first second"),
    (OSError(errno.ENOSPC, "No space left on device", "mlruns/artifacts/model.pt"),
     "tfreeze models: error: disk full while writing mlruns/artifacts/model.pt: free space and re-run"),
])
def test_any_user_error_reaches_stderr_as_one_line(capsys, monkeypatch, error, message):
    def fail(p, args):
        raise error

    monkeypatch.setitem(cli.COMMANDS, "models", (fail, "fails"))

    code = cli.main(["models"])

    assert code == 2 and one_line(capsys.readouterr().err).startswith(message)


def test_debug_shows_the_traceback_instead(tiny):
    with pytest.raises(UserError, match="train.epochs = 0 is not allowed"):
        cli.main(["train", "--debug", *sets("train.epochs=0")])


# --------------------------------------------------------------------------- audio accepted


def test_odd_wav_formats_rates_and_stereo_are_converted(tmp_path):
    src = tmp_path / "src" / "a"
    write_wav(src / "u8.wav", tone(1.5), subtype="PCM_U8")
    write_wav(src / "s24.wav", tone(1.5), subtype="PCM_24")
    write_wav(src / "f32.wav", tone(1.5), subtype="FLOAT")
    write_wav(src / "k8.wav", tone(1.5, sr=8000), sr=8000)
    write_wav(src / "k48.wav", tone(1.5, sr=48000), sr=48000)
    write_wav(src / "stereo.wav", np.stack([tone(1.5), tone(1.5)], axis=1))

    manifest = audio.import_tree(tmp_path / "src", tmp_path / "out", "folder", clip_seconds=1.0)

    assert (manifest["status"] == "ok").all()
    rates = dict(zip(manifest["clip_id"], manifest["sample_rate"], strict=True))
    assert (rates["k8"], rates["k48"]) == (8000, 48000)
    assert manifest.set_index("clip_id").at["stereo", "channels"] == 2
    for rel in manifest["file"]:
        info = sf.info(tmp_path / "out" / rel)
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 1, SR, "PCM_16")


@pytest.mark.parametrize(("min_seconds", "status", "reason"), [
    (1.0, "ok", ""),
    (3.0, "skipped", "too short: 2.0 s < 3.0 s"),
])
def test_two_second_clip_is_padded_or_skipped_and_listed(tmp_path, capsys, min_seconds, status, reason):
    write_wav(tmp_path / "src" / "a" / "long.wav", tone(4.0))
    write_wav(tmp_path / "src" / "a" / "short.wav", tone(2.0))

    manifest = audio.import_tree(tmp_path / "src", tmp_path / "out", "folder", clip_seconds=30.0,
                                 min_seconds=min_seconds).set_index("clip_id")

    assert (manifest.at["short", "status"], manifest.at["short", "reason"]) == (status, reason)
    assert manifest.at["short", "seconds"] == pytest.approx(2.0)
    listed = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    assert "short" in set(listed["clip_id"])
    if status == "ok":
        padded, _ = sf.read(tmp_path / "out" / "a" / "short.wav")
        assert len(padded) == 30 * SR and not padded[2 * SR:].any()
    else:
        assert "short.wav (too short: 2.0 s < 3.0 s)" in capsys.readouterr().out


def test_gtzan_accepts_upper_case_extensions(tmp_path):
    root = gtzan_tree(tmp_path / "g")
    for path in (root / "genres" / "blues").iterdir():
        path.rename(path.with_suffix(".WAV"))

    clips = audio.scan(root, "gtzan")

    blues = [c for c in clips if c.genre == "blues"]
    assert [(c.clip_id, c.skip) for c in blues] == [("blues.00000", "")]


def test_duplicate_clip_id_in_another_class_is_skipped_and_listed(tmp_path):
    write_wav(tmp_path / "src" / "a" / "x.wav", tone(1.0))
    write_wav(tmp_path / "src" / "b" / "x.wav", tone(1.0))
    write_wav(tmp_path / "src" / "b" / "y.wav", tone(1.0))

    manifest = audio.import_tree(tmp_path / "src", tmp_path / "out", "folder", clip_seconds=1.0)

    rows = manifest.set_index(["genre", "clip_id"])
    assert rows.at[("b", "x"), "reason"] == "duplicate clip id (kept a/x.wav)"
    assert rows.at[("a", "x"), "status"] == rows.at[("b", "y"), "status"] == "ok"


# --------------------------------------------------------------------------- weights


def test_missing_weights_offline_fail_fast_naming_file_and_folder(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(models, "DOWNLOAD_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # a firewall that drops: connects (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/models/resnet50-11ad3fa6.pth"
        monkeypatch.setattr(models.Weights, "url", lambda weights: url)
        start = time.monotonic()

        with pytest.raises(UserError) as err:
            models.build("resnet50", 10, weights="imagenet")

    folder = tmp_path / "torch" / "hub" / "checkpoints"
    assert time.monotonic() - start < 10
    assert f"put resnet50-11ad3fa6.pth (from {url}) in {folder}" in str(err.value)
    assert "\n" not in str(err.value) and list(folder.iterdir()) == []


WEIGHT_FILES = {
    "not a torch file": lambda path: path.write_text("hello\n"),
    "another architecture": lambda path: torch.save(models.REGISTRY["resnet_demo"].build(224)
                                                    .state_dict(), path),
    "not a state dict": lambda path: torch.save([1, 2, 3], path),
}
WEIGHT_MESSAGES = {
    "not a torch file": "could not be read as a state dict (",
    "another architecture": "does not fit resnet50: 246 missing keys (e.g. 'layer1.0.conv3.weight'), "
                            "19 tensors of another shape (e.g. 'layer1.0.conv1.weight')",
    "not a state dict": "holds a list, not a state dict",
}


@pytest.mark.parametrize("kind", list(WEIGHT_FILES))
def test_bad_weights_file_is_one_line_naming_the_expected_file(tmp_path, kind):
    path = tmp_path / "weights.pth"
    WEIGHT_FILES[kind](path)

    with pytest.raises(UserError) as err:
        models.build("resnet50", 10, weights="imagenet", weights_path=str(path))

    message = str(err.value)
    assert message.startswith(f"weights file {path} ") and WEIGHT_MESSAGES[kind] in message
    assert "resnet50-11ad3fa6.pth" in message and "\n" not in message


# --------------------------------------------------------------------------- disk full


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_writing_features_leaves_them_unchanged(tiny, monkeypatch):
    before = snapshot(tiny / "data")
    monkeypatch.setattr(np, "save", enospc)

    with pytest.raises(UserError) as err:
        features.build(config.load("params.yaml"))

    assert str(err.value).startswith("disk full while writing data/features: free space in ")
    assert "\n" not in str(err.value)
    assert snapshot(tiny / "data") == before


def test_disk_full_while_writing_a_checkpoint_is_one_line_and_leaves_no_file(tiny, capsys,
                                                                              monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tiny}/mlruns/mlflow.db")
    monkeypatch.setattr(torch, "save", enospc)

    code = cli.main(["train", *CELL, *sets("train.epochs=1")])

    err = one_line(capsys.readouterr().err)
    assert code == 2
    assert err.startswith("tfreeze train: error: disk full while writing models/vit_demo/")
    assert [p for p in (tiny / "models").rglob("*") if p.is_file()] == []


def test_torch_save_on_a_full_disk_is_recognised(tmp_path, monkeypatch):
    # torch.save(obj, path) reports ENOSPC as a RuntimeError without errno.
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: SimpleNamespace(free=4096))

    with pytest.raises(UserError, match="disk full while writing .*model.pt"):
        with atomic.atomic_path(tmp_path / "model.pt"):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    assert list(tmp_path.iterdir()) == []


def test_other_errors_in_atomic_writes_are_not_called_disk_full(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_path(tmp_path / "model.pt"):
            raise RuntimeError("boom")


# --------------------------------------------------------------------------- security


def torch_load_calls(tree: ast.AST) -> list[ast.Call]:
    return [node for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"]


def test_every_torch_load_in_src_uses_weights_only():
    sources = sorted((REPO / "src").rglob("*.py"))
    calls, unsafe = 0, []
    for path in sources:
        tree = ast.parse(path.read_text(), filename=str(path))
        assert not any(isinstance(node, ast.ImportFrom) and node.module == "torch"
                       and any(a.name == "load" for a in node.names) for node in ast.walk(tree)), path
        for call in torch_load_calls(tree):
            calls += 1
            flags = {k.arg: k.value for k in call.keywords}
            if not (isinstance(flags.get("weights_only"), ast.Constant)
                    and flags["weights_only"].value is True):
                unsafe.append(f"{path.relative_to(REPO)}:{call.lineno}")

    assert calls >= 1
    assert unsafe == []


def test_ui_binds_to_localhost_by_default(tmp_path):
    args = cli.parser().parse_args(["ui"])
    p = config.load(write_params(tmp_path))

    command = ui.command(tracking.Tracking.from_params(p), args.host, args.port)

    assert args.host == "127.0.0.1"
    assert command[command.index("--host") + 1] == "127.0.0.1"


def make_tar(path: Path, members: list[tarfile.TarInfo]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, 1 if kind == tarfile.REGTYPE else 0
    return info


UNSAFE_MEMBERS = {
    "absolute path": [member("/tmp/tfreeze-evil.txt")],
    "parent folder": [member("genres/../../evil.txt")],
    "symlink out": [member("genres/link", tarfile.SYMTYPE, "../../outside"),
                    member("genres/link/evil.txt")],
    "hard link": [member("genres/passwd", tarfile.LNKTYPE, "/etc/passwd")],
    "device": [member("genres/null", tarfile.CHRTYPE)],
}


@pytest.mark.parametrize("kind", list(UNSAFE_MEMBERS))
def test_archive_with_an_unsafe_member_is_refused_whole(tmp_path, kind):
    archive = make_tar(tmp_path / "a.tar.gz", [member("genres/ok.txt"), *UNSAFE_MEMBERS[kind]])
    (tmp_path / "x" / "dest").mkdir(parents=True)

    with pytest.raises(UserError, match=f"refusing to extract {archive}: member ") as err:
        audio.safe_extract(archive, tmp_path / "x" / "dest")

    assert "\n" not in str(err.value)
    assert snapshot(tmp_path / "x") == {"dest": "dir"}
    assert not Path("/tmp/tfreeze-evil.txt").exists()


MASKED = {
    "postgresql+psycopg://user:secret@127.0.0.1:5432/db": "postgresql+psycopg://user:***@127.0.0.1:5432/db",
    "http://alice:p@ss:w0rd@mlflow.lan:5000": "http://alice:***@mlflow.lan:5000",
    "redis://:token@cache/0": "redis://:***@cache/0",
    "postgresql://u@h/db?password=secret&sslmode=require": "postgresql://u@h/db?password=***&sslmode=require",
    "sqlite:///mlruns/mlflow.db": "sqlite:///mlruns/mlflow.db",
    "http://127.0.0.1:5000": "http://127.0.0.1:5000",
}


@pytest.mark.parametrize("url", list(MASKED))
def test_credentials_are_masked(url):
    assert tracking.mask(url) == MASKED[url]


def test_credentials_are_masked_in_mlflow_params(monkeypatch):
    logged = {}
    monkeypatch.setattr(mlflow, "log_params", logged.update)

    tracking.log_params({"sweep.storage": "postgresql://bob:hunter2@db/optuna", "train.epochs": 3})

    assert logged == {"sweep.storage": "postgresql://bob:***@db/optuna", "train.epochs": "3"}

"""The spectrogram recipe (log-mel, resized, min-max) and the per-split feature arrays on disk."""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio
from torch.nn import functional as F
from tqdm import tqdm

from .. import atomic, provenance
from ..config import Params
from ..errors import UserError
from . import splits
from .inputs import IMAGENET_MEAN as IMAGENET_MEAN  # re-exported: the torch-only training core
from .inputs import IMAGENET_STD as IMAGENET_STD  # imports these from .inputs, not from here
from .inputs import Split
from .inputs import to_model_input as to_model_input

META = "meta.json"
CLIPS = "clips"  # fold schemes: every clip's image once (clips.npy, clips.csv)
FOLDS = "folds.csv"  # fold schemes: (repeat, fold, clip_id, genre)


@dataclass(frozen=True)
class Recipe:
    """Everything that decides the pixels of one spectrogram image."""

    sample_rate: int
    n_fft: int
    hop_length: int
    n_mels: int
    compression: str
    image_size: int

    @classmethod
    def from_params(cls, p: Params) -> Recipe:
        f = p["features"]
        return cls(p["data"]["sample_rate"], f["n_fft"], f["hop_length"], f["n_mels"],
                   f["compression"], f["image_size"])

    def mel(self) -> torchaudio.transforms.MelSpectrogram:
        # Slaney mel scale and area normalisation, zero padding: what librosa.feature.melspectrogram
        # (used by most GTZAN spectrogram work) computes; torchaudio's defaults differ (HTK, no norm).
        return torchaudio.transforms.MelSpectrogram(
            sample_rate=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length,
            n_mels=self.n_mels, mel_scale="slaney", norm="slaney", pad_mode="constant",
        )


COMPRESSIONS = {
    "log1p": torch.log1p,
    "db": torchaudio.transforms.AmplitudeToDB(stype="power", top_db=80.0),
}


def spectrogram_image(wave: torch.Tensor, recipe: Recipe, mel=None) -> torch.Tensor:
    """One clip -> (image_size, image_size) float tensor in [0, 1]."""
    mel = mel if mel is not None else recipe.mel()
    spec = COMPRESSIONS[recipe.compression](mel(wave))
    size = (recipe.image_size, recipe.image_size)
    # antialias=True is torchvision's Resize default for tensors: the time axis shrinks ~6x.
    img = F.interpolate(spec[None, None], size=size, mode="bilinear", antialias=True)[0, 0]
    lo, hi = img.min(), img.max()
    return (img - lo) / (hi - lo).clamp_min(1e-8)


def _clip_image(path: str, recipe: Recipe) -> np.ndarray:
    wave, _ = sf.read(path, dtype="float32", always_2d=False)
    with torch.inference_mode():
        return spectrogram_image(torch.from_numpy(wave), recipe, _worker_mel(recipe)).numpy()


_MEL_CACHE: dict[Recipe, torchaudio.transforms.MelSpectrogram] = {}


def _worker_mel(recipe: Recipe) -> torchaudio.transforms.MelSpectrogram:
    if recipe not in _MEL_CACHE:
        _MEL_CACHE[recipe] = recipe.mel()
    return _MEL_CACHE[recipe]


def _init_worker() -> None:
    torch.set_num_threads(1)  # parallelism comes from the processes


STORE = {
    "float16": lambda img: img.astype(np.float16),
    "uint8": lambda img: np.round(img * 255).astype(np.uint8),
}


def compute_images(paths: list[str], recipe: Recipe, workers: int, dtype: str) -> np.ndarray:
    """Images for ``paths`` in order, computed over ``workers`` processes (0 = all cores)."""
    workers = workers or len(os.sched_getaffinity(0))
    out = np.empty((len(paths), recipe.image_size, recipe.image_size), dtype=dtype)
    work = partial(_clip_image, recipe=recipe)
    bar = tqdm(total=len(paths), desc="features", unit="clip", disable=None)
    with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
        for i, img in enumerate(pool.map(work, paths, chunksize=8)):
            out[i] = STORE[dtype](img)
            bar.update()
    bar.close()
    return out


def memory_bytes() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(clips: int, image_size: int, dtype: str) -> None:
    """One line, before any work, if the feature arrays of ``clips`` clips would not fit in this
    machine's memory: they are built in memory and every run loads them whole."""
    item = np.dtype(dtype).itemsize
    need, have = clips * image_size**2 * item, memory_bytes()
    if need <= have:
        return
    largest = math.isqrt(have // max(clips * item, 1))
    raise UserError(f"features.image_size = {image_size}: the feature arrays of {clips:,} clips would take "
                    f"{_size(need)} ({image_size}² x {item} bytes each, {dtype}), more than this "
                    f"machine's {_size(have)} of memory; allowed here: features.image_size <= "
                    f"{largest}" + (" (or features.dtype = uint8)" if item > 1 else ""))


def _size(n: float) -> str:
    """``n`` bytes in binary units, e.g. 7.3 TiB."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "bytes" else f"{int(n)} bytes"
        n /= 1024
    return f"{n:,.1f} TiB"


# The params that decide a feature byte (given the raw audio, a DVC dependency of the stage):
# not where files live (data.path, data.out, features.out) nor how fast they are made (workers).
BYTE_PARAMS = {
    "data": ("source", "sample_rate", "clip_seconds", "min_seconds", "synthetic_clips_per_class",
             "synthetic_seed"),
    "split": ("scheme", "train", "val", "test", "seed", "folds", "repeats"),
    "features": ("n_fft", "hop_length", "n_mels", "compression", "image_size", "dtype"),
}


def params_hash(p: Params) -> str:
    """Hash of the params that decide the feature arrays (``BYTE_PARAMS``) and of the content of
    the ``split.groups`` file, if any (not its path)."""
    keys = {s: {k: p[s][k] for k in names} for s, names in BYTE_PARAMS.items()}
    if p["split"]["groups"]:  # absent without groups: the hash of every existing workspace holds
        keys["split"]["groups"] = splits.groups_digest(p["split"]["groups"])
    return provenance.json_hash(keys)


def build(p: Params) -> dict:
    """The features stage: split the corpus, compute one array per split, write meta + split CSV."""
    raw = Path(p["data"]["out"])
    manifest_path = raw / "manifest.csv"
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path} not found: run the data stage first (tfreeze data)")
    manifest = pd.read_csv(manifest_path, keep_default_na=False)
    table, notes = splits.make_split(manifest, splits.SplitConfig.from_params(p))
    for note in notes:
        print(f"split: {note}")
    recipe = Recipe.from_params(p)
    check_memory(int((manifest["status"] == "ok").sum()), recipe.image_size, p["features"]["dtype"])
    classes = sorted(manifest.loc[manifest["status"] == "ok", "genre"].unique())
    files = dict(zip(manifest["clip_id"], manifest["file"], strict=True))
    split = splits.SplitConfig.from_params(p)
    meta = {"classes": classes, "recipe": recipe.__dict__, "dtype": p["features"]["dtype"],
            "params_hash": params_hash(p), "scheme": split.scheme, "cells": split.cells, "splits": {}}
    if split.groups:  # what the split was grouped by: DVC does not track the file (dvc.yaml)
        meta["groups"] = {"path": split.groups, "sha256_16": splits.groups_digest(split.groups),
                          "n": int(table["group"].nunique())}
    # Single splits: one array per split. Fold schemes: every clip once (not once per fold), plus
    # the fold table; a training cell picks its train/val/test rows from it.
    if split.scheme in splits.FOLD_SCHEMES:
        meta["folds"], meta["repeats"] = split.folds, split.repeats
        clips = table.drop_duplicates("clip_id").sort_values(["genre", "clip_id"])
        parts = {CLIPS: clips[["clip_id", "genre"]]}
    else:
        parts = {name: table[table["split"] == name] for name in splits.SPLITS}
    with atomic.atomic_path(p["features"]["out"]) as tmp:
        tmp.mkdir()
        for name, rows in parts.items():
            rows = rows.reset_index(drop=True)
            paths = [str(raw / files[c]) for c in rows["clip_id"]]
            images = compute_images(paths, recipe, p["runtime"]["feature_workers"], p["features"]["dtype"])
            np.save(tmp / f"{name}.npy", images)
            rows.assign(label=rows["genre"].map(classes.index)).to_csv(tmp / f"{name}.csv", index=False)
            meta["splits"][name] = {"n": len(rows), "shape": list(images.shape)}
        if split.scheme in splits.FOLD_SCHEMES:
            table.to_csv(tmp / FOLDS, index=False)
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    # After the arrays: a failed or killed run leaves both outputs as they were.
    atomic.write_text(p["split"]["out"], table.to_csv(index=False))
    return meta


@dataclass(frozen=True)
class Store:
    """The features stage's output folder, and the params hash it must have been built with."""

    root: Path
    params_hash: str
    groups: str | None = None  # the split.groups file the params name

    @classmethod
    def from_params(cls, p: Params) -> Store:
        return cls(Path(p["features"]["out"]), params_hash(p), p["split"]["groups"])

    def load(self, name: str, cell: int = 0) -> Split:
        """One split of training cell ``cell`` whole in memory, after checking the current params.

        GTZAN at 224x224 float16 is ~100 MB: reading it once beats per-batch file access.
        """
        return self.load_cell(cell)[name]

    def load_cell(self, cell: int = 0) -> dict[str, Split]:
        """train / val / test of training cell ``cell`` (fold schemes: repeat * folds + fold)."""
        meta = self.read_meta()
        if meta.get("scheme") not in splits.FOLD_SCHEMES:
            if cell != 0:
                raise UserError(f"{self.root} holds one split ({meta.get('scheme')}); cell {cell} "
                                "needs split.scheme = kfold")
            return {name: self._read(name, meta) for name in splits.SPLITS}
        if not 0 <= cell < meta["cells"]:
            raise UserError(f"{self.root}: cell {cell} is outside 0 .. {meta['cells'] - 1} "
                            "(split.folds x split.repeats); check grid.folds")
        whole = self._read(CLIPS, meta)
        role = splits.cell_roles(pd.read_csv(self.root / FOLDS), cell, meta["folds"])
        roles = role.reindex(whole.clip_ids).to_numpy()
        picked = {}
        for name in splits.SPLITS:
            index = np.flatnonzero(roles == name)
            picked[name] = Split(whole.images[index], whole.labels[index],
                                 [whole.clip_ids[i] for i in index])
        return picked

    def _read(self, name: str, meta: dict) -> Split:
        images = np.load(self.root / f"{name}.npy")
        rows = pd.read_csv(self.root / f"{name}.csv")
        if len(rows) != len(images) or meta["splits"][name]["n"] != len(rows):
            raise UserError(f"{self.root}: {name}.npy and {name}.csv disagree; re-run: dvc repro -f features")
        return Split(torch.from_numpy(images), torch.tensor(rows["label"].to_numpy()),
                     rows["clip_id"].tolist())

    def read_meta(self) -> dict:
        path = self.root / META
        if not path.is_file():
            raise UserError(f"{path} not found: run the features stage first (tfreeze features)")
        meta = json.loads(path.read_text())
        built = meta.get("groups", {})
        if (meta.get("params_hash") != self.params_hash and self.groups and built.get("path") == self.groups
                and built.get("sha256_16") != splits.groups_digest(self.groups)):
            raise UserError(
                f"{self.groups} (split.groups) changed since the features in {self.root} were built; "
                "DVC does not track that file's content: re-run dvc repro -f features (or give the "
                "edited file a new name, which DVC sees as a params change)"
            )
        if meta.get("params_hash") != self.params_hash:
            raise UserError(
                f"features in {self.root} were built with other data/split/features params than "
                "params.yaml now holds; re-run the features stage: dvc repro features"
            )
        return meta

    def content_hash(self) -> str:
        """SHA-256 (16 hex digits) of the arrays and meta: the identity of what a run trained on."""
        arrays = sorted(p.name for p in self.root.glob("*.npy"))
        names = (META, *arrays, *([FOLDS] if (self.root / FOLDS).is_file() else []))
        return provenance.files_hash(self.root / name for name in names)

"""The spectrogram recipe (log-mel, resized, min-max) and the per-split feature arrays on disk."""

from __future__ import annotations

import hashlib
import json
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

from .. import atomic
from ..config import Params
from ..errors import UserError
from . import splits
from .inputs import IMAGENET_MEAN as IMAGENET_MEAN  # re-exported: the torch-only training core
from .inputs import IMAGENET_STD as IMAGENET_STD  # imports these from .inputs, not from here
from .inputs import Split
from .inputs import to_model_input as to_model_input

META = "meta.json"


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


def params_hash(p: Params) -> str:
    """Hash of every param that decides the feature arrays (data, split, features sections)."""
    keys = {s: p[s] for s in ("data", "split", "features")}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def build(p: Params) -> dict:
    """The features stage: split the corpus, compute one array per split, write meta + split CSV."""
    raw = Path(p["data"]["out"])
    manifest_path = raw / "manifest.csv"
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path} not found: run the data stage first (tfreeze data)")
    manifest = pd.read_csv(manifest_path, keep_default_na=False)
    table, notes = splits.make_split(manifest, p)
    for note in notes:
        print(f"split: {note}")
    recipe = Recipe.from_params(p)
    classes = sorted(manifest.loc[manifest["status"] == "ok", "genre"].unique())
    files = dict(zip(manifest["clip_id"], manifest["file"], strict=True))
    meta = {"classes": classes, "recipe": recipe.__dict__, "dtype": p["features"]["dtype"],
            "params_hash": params_hash(p), "splits": {}}
    with atomic.atomic_path(p["features"]["out"]) as tmp:
        tmp.mkdir()
        for name in splits.SPLITS:
            rows = table[table["split"] == name].reset_index(drop=True)
            paths = [str(raw / files[c]) for c in rows["clip_id"]]
            images = compute_images(paths, recipe, p["features"]["workers"], p["features"]["dtype"])
            np.save(tmp / f"{name}.npy", images)
            rows.assign(label=rows["genre"].map(classes.index)).to_csv(tmp / f"{name}.csv", index=False)
            meta["splits"][name] = {"n": len(rows), "shape": list(images.shape)}
        (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")
    # After the arrays: a failed or killed run leaves both outputs as they were.
    atomic.write_text(p["split"]["out"], table.to_csv(index=False))
    return meta


def load(p: Params, name: str) -> Split:
    """Load one split's arrays whole into memory, after checking they match the current params.

    GTZAN at 224x224 float16 is ~100 MB: reading it once beats per-batch file access.
    """
    root = Path(p["features"]["out"])
    meta = read_meta(p)
    images = np.load(root / f"{name}.npy")
    rows = pd.read_csv(root / f"{name}.csv")
    if len(rows) != len(images) or meta["splits"][name]["n"] != len(rows):
        raise UserError(f"{root}: {name}.npy and {name}.csv disagree; re-run: dvc repro -f features")
    return Split(torch.from_numpy(images), torch.tensor(rows["label"].to_numpy()),
                 rows["clip_id"].tolist())


def read_meta(p: Params) -> dict:
    path = Path(p["features"]["out"]) / META
    if not path.is_file():
        raise UserError(f"{path} not found: run the features stage first (tfreeze features)")
    meta = json.loads(path.read_text())
    if meta.get("params_hash") != params_hash(p):
        raise UserError(
            f"features in {path.parent} were built with other data/split/features params than "
            "params.yaml now holds; re-run the features stage: dvc repro features"
        )
    return meta

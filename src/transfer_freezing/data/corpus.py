"""The data stage: materialise the raw audio corpus under data/raw/ (+ manifest.csv)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from .. import atomic
from ..config import Params


def _synthetic(p: Params, out: Path) -> pd.DataFrame:
    from . import synthetic

    d = p["data"]
    with atomic.atomic_path(out) as tmp:
        manifest = synthetic.generate(tmp, d["synthetic_clips_per_class"], d["clip_seconds"],
                                      d["sample_rate"], d["synthetic_seed"])
    print(f"{len(manifest)} synthetic clips ok, 0 skipped")
    return manifest


def _audio_tree(p: Params, out: Path) -> pd.DataFrame:
    from . import audio

    d = p["data"]
    root = d["path"]
    if d["download"] and not (root and Path(root).exists()):
        root = str(audio.download_gtzan(Path(root or "data/download")))
    return audio.import_tree(root, out, d["source"], d["sample_rate"], d["clip_seconds"],
                             d["min_seconds"])


SOURCES: dict[str, Callable[[Params, Path], pd.DataFrame]] = {
    "synthetic": _synthetic,
    "gtzan": _audio_tree,
    "folder": _audio_tree,
}


def materialise(p: Params) -> pd.DataFrame:
    """Write ``data.out``/<class>/<clip>.wav (22,050 Hz mono, fixed length) and manifest.csv."""
    return SOURCES[p["data"]["source"]](p, Path(p["data"]["out"]))

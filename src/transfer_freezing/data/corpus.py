"""The data stage: materialise the raw audio corpus under data/raw/ (+ manifest.csv)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .. import atomic
from ..config import Params


@dataclass(frozen=True)
class CorpusConfig:
    """The ``data`` section: where the audio comes from and the shape every clip is given."""

    source: str
    path: str | None
    download: bool
    out: Path
    sample_rate: int
    clip_seconds: float
    min_seconds: float
    synthetic_clips_per_class: int
    synthetic_seed: int

    @classmethod
    def from_params(cls, p: Params) -> CorpusConfig:
        d = p["data"]
        return cls(d["source"], d["path"], d["download"], Path(d["out"]), d["sample_rate"],
                   d["clip_seconds"], d["min_seconds"], d["synthetic_clips_per_class"],
                   d["synthetic_seed"])


def _synthetic(c: CorpusConfig) -> pd.DataFrame:
    from . import synthetic

    with atomic.atomic_path(c.out) as tmp:
        manifest = synthetic.generate(tmp, c.synthetic_clips_per_class, c.clip_seconds,
                                      c.sample_rate, c.synthetic_seed)
    print(f"{len(manifest)} synthetic clips ok, 0 skipped")
    return manifest


def _audio_tree(c: CorpusConfig) -> pd.DataFrame:
    from . import audio

    root = c.path
    if c.download and not (root and Path(root).exists()):
        root = str(audio.download_gtzan(Path(root or "data/download")))
    return audio.import_tree(root, c.out, c.source, c.sample_rate, c.clip_seconds, c.min_seconds)


SOURCES: dict[str, Callable[[CorpusConfig], pd.DataFrame]] = {
    "synthetic": _synthetic,
    "gtzan": _audio_tree,
    "folder": _audio_tree,
}


def materialise(p: Params) -> pd.DataFrame:
    """Write ``data.out``/<class>/<clip>.wav (22,050 Hz mono, fixed length) and manifest.csv."""
    c = CorpusConfig.from_params(p)
    return SOURCES[c.source](c)

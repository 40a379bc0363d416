"""Decode, validate and normalise user-provided audio trees (folder-per-class and GTZAN)."""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torchaudio.functional as AF
from torchaudio.datasets import gtzan as _tv_gtzan
from tqdm import tqdm

from ..atomic import atomic_path
from ..errors import UserError

PathLike = str | os.PathLike[str]

GENRES: tuple[str, ...] = tuple(_tv_gtzan.gtzan_genres)
GTZAN_URL: str = _tv_gtzan.URL
GTZAN_FOLDER = _tv_gtzan.FOLDER_IN_ARCHIVE  # "genres"
# Where the genre folders may sit relative to the path the user gives (dataset folder or parent):
# the original tarball, the Kaggle copy, and the Kaggle zip's top-level "Data" folder.
GTZAN_LAYOUTS: tuple[str, ...] = (".", GTZAN_FOLDER, "genres_original", "Data/genres_original")
DOWNLOAD_TIMEOUT_S = 20.0  # seconds the Hub may take to answer the metadata request

MANIFEST_COLUMNS = [
    "clip_id", "genre", "file", "source", "status", "reason", "sample_rate", "channels", "seconds",
]
SUMMARY_SHOWN = 3  # skipped files named in the summary line before "…"
IGNORED_DIRS = frozenset({"__MACOSX"})

# Extensions per soundfile format name; formats not listed use their lower-cased name (FLAC ->
# .flac). RAW is left out: libsndfile reads any headerless bytes as audio.
_FORMAT_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "AIFF": ("aiff", "aif", "aifc"),
    "AU": ("au", "snd"),
    "IRCAM": ("sf",),
    "MAT4": ("mat",),
    "MAT5": ("mat",),
    "MPC2K": ("mpc",),
    "NIST": ("nist", "sph"),
    "OGG": ("ogg", "oga", "opus"),
    "SVX": ("svx", "iff", "8svx"),
    "WAVEX": ("wav",),
    "RAW": (),
}
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    f".{ext}"
    for fmt in sf.available_formats()
    for ext in _FORMAT_EXTENSIONS.get(fmt, (fmt.lower(),))
)


class BadClip(Exception):
    """A file that cannot become a training clip; ``reason`` is a few words for the manifest."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Clip:
    """One audio file found by :func:`scan`; ``skip`` is a reason decided before decoding."""

    genre: str
    clip_id: str
    path: Path
    skip: str = ""


@dataclass(frozen=True)
class _Raw:
    samples: np.ndarray  # (frames, channels) float32
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.sample_rate


# --------------------------------------------------------------------------- decoding


def decode(
    path: PathLike,
    sample_rate: int = 22050,
    clip_samples: int | None = None,
    min_samples: int = 0,
) -> np.ndarray:
    """Decode ``path`` with soundfile into a float32 mono array at ``sample_rate``.

    Stereo is averaged to mono, other rates are resampled (``torchaudio.functional.resample``).
    With ``clip_samples``, a clip shorter than that is zero-padded at the end and a longer one is
    cropped to its first ``clip_samples`` (the start, as GTZAN clips are excerpts whose extra
    fraction of a second sits at the end). Raises :class:`BadClip` for an empty, undecodable,
    sample-less or non-finite file, or one shorter than ``min_samples`` after resampling.
    """
    return _normalise(_read(Path(path)), sample_rate, clip_samples, min_samples)


def _read(path: Path) -> _Raw:
    try:
        if path.stat().st_size == 0:
            raise BadClip("empty file")
        with sf.SoundFile(path) as f:
            if f.format == "RAW":  # libsndfile's guess for a header-less .au/.snd: random bytes
                raise BadClip("not audio: no header")
            raw = _Raw(f.read(dtype="float32", always_2d=True), f.samplerate, f.channels)
    except sf.SoundFileError as err:
        raise BadClip(_soundfile_reason(err)) from None
    except OSError as err:
        raise BadClip(f"unreadable: {err.strerror or err}") from None
    if len(raw.samples) == 0:
        raise BadClip("no samples")
    return raw


# libsndfile messages that mislead once we know the file exists (it says this when its MPEG
# probe fails on random bytes).
_REWORDED = {"file does not exist or is not a regular file (possibly a pipe?)": "undecodable data"}


def _soundfile_reason(err: Exception) -> str:
    """libsndfile's message without the "Error opening 'path': " prefix: "format not recognised"."""
    text = str(getattr(err, "error_string", "") or err).strip().rstrip(".")
    text = text[:1].lower() + text[1:]
    return _REWORDED.get(text, text) or "not audio"


def _normalise(
    raw: _Raw, sample_rate: int, clip_samples: int | None, min_samples: int
) -> np.ndarray:
    mono = raw.samples.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        raise BadClip("non-finite samples")
    if raw.sample_rate != sample_rate:
        mono = AF.resample(torch.from_numpy(mono), raw.sample_rate, sample_rate).numpy()
    if len(mono) < min_samples:
        seconds, least = len(mono) / sample_rate, min_samples / sample_rate
        raise BadClip(f"too short: {seconds:.1f} s < {least:.1f} s")
    return _fit(mono, clip_samples)


def _fit(mono: np.ndarray, clip_samples: int | None) -> np.ndarray:
    if clip_samples is None:
        return mono
    if len(mono) >= clip_samples:
        return mono[:clip_samples]
    return np.pad(mono, (0, clip_samples - len(mono)))


# --------------------------------------------------------------------------- scanning


def scan(root: PathLike, source: str) -> list[Clip]:
    """Every audio file of the tree under ``root``, sorted by class then file name.

    ``folder``: each non-hidden sub-folder is a class, its audio files (any extension soundfile
    reads, any case) are clips; other files and nested folders are ignored. ``gtzan``: the same,
    with ``root`` the dataset folder or its parent (see ``GTZAN_LAYOUTS``), all 10 genres required,
    non-genre folders ignored and names other than ``<genre>.NNNNN.<ext>`` skipped. The clip id is
    the file name without extension and must be unique across classes: later duplicates are
    returned with ``skip`` set.
    """
    if source not in _SCANNERS:
        raise UserError(f"data.source={source!r}: audio import allows {', '.join(_SCANNERS)}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"audio folder {root} does not exist: expected {_EXPECTED[source]}")
    return _dedupe(_SCANNERS[source](root))


def _scan_folder(root: Path) -> list[Clip]:
    classes = _class_dirs(root)
    if not classes:
        raise UserError(f"no class folders in {root}: expected {_EXPECTED['folder']}")
    return [clip for d in classes for clip in _class_clips(d, None)]


def _scan_gtzan(root: Path) -> list[Clip]:
    base = _gtzan_base(root)
    dirs = {d.name: d for d in _class_dirs(base)}
    missing = [g for g in GENRES if g not in dirs]
    if missing:
        raise UserError(
            f"GTZAN folder {base} lacks genre folder(s) {', '.join(missing)}: "
            f"expected all of {', '.join(GENRES)}"
        )
    extra = sorted(set(dirs) - set(GENRES))
    if extra:
        _note(f"ignoring non-genre folder(s) in {base}: {', '.join(extra)}")
    return [clip for g in GENRES for clip in _class_clips(dirs[g], _gtzan_name(g))]


def _gtzan_base(root: Path) -> Path:
    for rel in GTZAN_LAYOUTS:
        base = root / rel
        if any((base / g).is_dir() for g in GENRES):
            return base
    raise UserError(f"no GTZAN genre folders in {root}: expected {_EXPECTED['gtzan']}")


def _gtzan_name(genre: str) -> Callable[[str], bool]:
    pattern = re.compile(rf"{re.escape(genre)}\.\d{{5}}")
    return lambda clip_id: pattern.fullmatch(clip_id) is not None


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in IGNORED_DIRS


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and _visible(p))


def _class_clips(folder: Path, name_ok: Callable[[str], bool] | None) -> list[Clip]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and _visible(p))
    audio = [p for p in files if p.suffix.lower() in AUDIO_EXTENSIONS]
    if not audio:
        raise UserError(f"class {folder.name!r} has no audio files in {folder}")
    if len(audio) < len(files):
        _note(f"ignoring {len(files) - len(audio)} non-audio file(s) in {folder}")
    genre = folder.name
    return [
        Clip(genre, p.stem, p, "" if name_ok is None or name_ok(p.stem) else
             f"name is not {genre}.NNNNN{p.suffix}")
        for p in audio
    ]


def _dedupe(clips: Iterable[Clip]) -> list[Clip]:
    kept: dict[str, Clip] = {}
    out = []
    for clip in clips:
        first = kept.setdefault(clip.clip_id, clip) if not clip.skip else clip
        if first is not clip:
            clip = replace(clip, skip=f"duplicate clip id (kept {first.genre}/{first.path.name})")
        out.append(clip)
    return out


_SCANNERS: dict[str, Callable[[Path], list[Clip]]] = {"folder": _scan_folder, "gtzan": _scan_gtzan}
_EXPECTED = {
    "folder": "a folder-per-class tree <path>/<class>/<clip>.wav (any soundfile format)",
    "gtzan": (
        "GTZAN's genres/<genre>/<genre>.000NN.au or genres_original/<genre>/<genre>.000NN.wav "
        "(path = that folder or its parent)"
    ),
}


def _note(message: str) -> None:
    print(f"data: {message}")


# --------------------------------------------------------------------------- importing


@dataclass(frozen=True)
class _Target:
    sample_rate: int
    clip_samples: int | None
    min_samples: int


def import_tree(
    root: PathLike,
    out: PathLike,
    source: str,
    sample_rate: int = 22050,
    clip_seconds: float | None = 30.0,
    min_seconds: float = 1.0,
) -> pd.DataFrame:
    """Decode every file of ``root`` once and write ``out/<genre>/<clip_id>.wav`` + manifest.

    Clips are normalised by :func:`decode` (mono, ``sample_rate``, exactly ``clip_seconds``) and
    written as 16-bit PCM. ``out/manifest.csv`` lists every file seen (``MANIFEST_COLUMNS``;
    sample rate, channels and seconds are the original's). ``out`` is replaced atomically: a
    failure, e.g. a class without one readable clip, leaves no partial output.
    """
    clips = scan(root, source)
    target = _Target(
        sample_rate,
        None if clip_seconds is None else round(clip_seconds * sample_rate),
        round(min_seconds * sample_rate),
    )
    with atomic_path(out) as tmp:
        tmp.mkdir()
        manifest = _manifest(_import_all(clips, tmp, target, Path(root)))
        _require_every_class(clips, manifest)
        manifest.to_csv(tmp / "manifest.csv", index=False)
    print(summary(manifest))
    return manifest


def _import_all(clips: list[Clip], out: Path, target: _Target, root: Path) -> list[dict[str, Any]]:
    work = partial(_import_one, out=out, target=target, root=root)
    workers = min(8, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # map keeps the input order
        rows = pool.map(work, clips)
        return list(tqdm(rows, total=len(clips), desc="decode", unit="clip", disable=None))


def _import_one(clip: Clip, out: Path, target: _Target, root: Path) -> dict[str, Any]:
    # The source path relative to data.path: moving the audio tree changes no byte of data/raw.
    source = clip.path.relative_to(root).as_posix() if clip.path.is_relative_to(root) else str(clip.path)
    row: dict[str, Any] = {
        "clip_id": clip.clip_id, "genre": clip.genre, "file": "", "source": source,
        "status": "skipped", "reason": clip.skip,
        "sample_rate": pd.NA, "channels": pd.NA, "seconds": np.nan,
    }
    if clip.skip:
        return row
    try:
        raw = _read(clip.path)
        row.update(
            sample_rate=raw.sample_rate, channels=raw.channels, seconds=round(raw.seconds, 4)
        )
        mono = _normalise(raw, target.sample_rate, target.clip_samples, target.min_samples)
    except BadClip as bad:
        return {**row, "reason": bad.reason}
    rel = Path(clip.genre) / f"{clip.clip_id}.wav"
    (out / clip.genre).mkdir(exist_ok=True)
    sf.write(out / rel, np.clip(mono, -1.0, 1.0), target.sample_rate, subtype="PCM_16")
    return {**row, "file": rel.as_posix(), "status": "ok"}


def _manifest(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    return frame.astype({"sample_rate": "Int64", "channels": "Int64", "seconds": "float64"})


def _require_every_class(clips: list[Clip], manifest: pd.DataFrame) -> None:
    readable = set(manifest.loc[manifest["status"] == "ok", "genre"])
    for clip in clips:
        if clip.genre not in readable:
            raise UserError(
                f"class {clip.genre!r} has no readable clip in {clip.path.parent} "
                f"(e.g. {clip.path.name}: {_reason_of(manifest, clip)})"
            )


def _reason_of(manifest: pd.DataFrame, clip: Clip) -> str:
    row = (manifest["clip_id"] == clip.clip_id) & (manifest["genre"] == clip.genre)
    return str(manifest.loc[row, "reason"].iloc[0])


def summary(manifest: pd.DataFrame) -> str:
    """One line: ``999 clips ok, 1 skipped: jazz.00054.wav (format not recognised)``."""
    ok = int((manifest["status"] == "ok").sum())
    bad = manifest[manifest["status"] != "ok"]
    line = f"{ok} clips ok, {len(bad)} skipped"
    if len(bad):
        named = [f"{Path(s).name} ({r})" for s, r in zip(bad["source"], bad["reason"], strict=True)]
        more = ", …" if len(named) > SUMMARY_SHOWN else ""
        line += ": " + ", ".join(named[:SUMMARY_SHOWN]) + more
    return line


# --------------------------------------------------------------------------- download

# GTZAN's original tarball as the Hugging Face Hub dataset ``marsyas/gtzan`` mirrors it
# (torchaudio's URL, ``GTZAN_URL``, has been dead since 2022).
GTZAN_HUB_REPO = "marsyas/gtzan"
GTZAN_HUB_FILE = "data/genres.tar.gz"
# The branch ``main``, not a commit: no commit id of the dataset could be looked up when this was
# written (no route to the Hub), and a made-up one would break every download. What is pinned is
# the file's bytes, by GTZAN_SHA256: a ``main`` that ever serves another file fails that check.
# Replace with the commit id (40 hex digits) once known: the Hub's cache then needs no request.
GTZAN_HUB_REVISION = "main"
# torchaudio's record of the original tarball's sha256 (``torchaudio.datasets.gtzan._CHECKSUMS``
# for opihi.cs.uvic.ca/sound/genres.tar.gz). The mirror's file is expected to be that same tarball
# (1.23 GB); a real download that differs fails with the one line of ``_verify``, which says how to
# check it. Tests pass their own tarball's sha256 to ``download_gtzan`` instead.
GTZAN_SHA256: str = _tv_gtzan._CHECKSUMS[GTZAN_URL]
KAGGLE_ROUTE = (
    "or fetch GTZAN by hand (e.g. Kaggle's 'GTZAN Dataset - Music Genre Classification', "
    "genres_original/) and set data.path to its folder"
)


def download_gtzan(dest: PathLike, sha256: str | None = None, endpoint: str | None = None,
                   cache_dir: PathLike | None = None) -> Path:
    """Fetch GTZAN's tarball from the Hub (``GTZAN_HUB_REPO``), verify and unpack it; return ``dest/genres``.

    ``huggingface_hub.hf_hub_download`` does the transfer: the Hub's cache (``cache_dir``, else
    ``HF_HUB_CACHE`` / ``HF_HOME``), a progress bar, offline mode (``HF_HUB_OFFLINE=1``: the cache
    only), and resuming a dropped connection within the run (a ranged request). ``endpoint`` (else
    ``HF_ENDPOINT``) points it at a mirror. The file's sha256 must be ``sha256`` (default
    ``GTZAN_SHA256``); an existing ``dest/genres`` is reused as it is. Offline without the file in
    the cache, an unreachable Hub, a mismatching file or an unsafe archive: one :class:`UserError` line.
    """
    dest = Path(dest)
    target = dest / GTZAN_FOLDER
    if target.is_dir():
        return target
    archive = _hub_download(endpoint, cache_dir)
    _verify(archive, sha256 or GTZAN_SHA256)
    with atomic_path(target) as tmp:
        safe_extract(archive, tmp.parent)
        if not tmp.is_dir():
            raise UserError(f"{archive} has no {GTZAN_FOLDER}/ folder: is it the GTZAN tarball?")
    return target


def _hub_download(endpoint: str | None, cache_dir: PathLike | None) -> Path:
    """The tarball's path in the Hub cache, downloaded there first if missing."""
    import httpx2  # huggingface_hub's HTTP client: a transfer that fails after its retries raises these
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    where = f"{GTZAN_HUB_REPO} {GTZAN_HUB_FILE} @ {GTZAN_HUB_REVISION}"
    host = endpoint or constants.ENDPOINT
    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    try:
        path = hf_hub_download(GTZAN_HUB_REPO, GTZAN_HUB_FILE, repo_type="dataset",
                               revision=GTZAN_HUB_REVISION, endpoint=endpoint, cache_dir=cache_dir,
                               etag_timeout=DOWNLOAD_TIMEOUT_S)
    except LocalEntryNotFoundError:
        if constants.is_offline_mode():
            raise UserError(
                f"HF_HUB_OFFLINE=1 and GTZAN ({where}) is not in the Hub cache {cache}: run once with "
                f"network (same HF_HOME / HF_HUB_CACHE) or copy that cache here, {KAGGLE_ROUTE}"
            ) from None
        raise UserError(
            f"could not reach the Hugging Face Hub at {host} for GTZAN ({where}) and it is not in the "
            f"Hub cache {cache}: check the network (or HF_ENDPOINT for a mirror), {KAGGLE_ROUTE}"
        ) from None
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as err:
        raise UserError(
            f"could not download GTZAN ({where}) from {host} ({_first_line(err)}): re-run to resume, "
            f"{KAGGLE_ROUTE}"
        ) from None
    return Path(path)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__


def _verify(archive: Path, sha256: str) -> None:
    with open(archive, "rb") as f:
        got = hashlib.file_digest(f, "sha256").hexdigest()
    if got != sha256:
        raise UserError(
            f"{archive.resolve()} has sha256 {got}, expected {sha256} (the original GTZAN tarball, as "
            f"torchaudio records it): the mirror ({GTZAN_HUB_REPO} {GTZAN_HUB_FILE} @ "
            f"{GTZAN_HUB_REVISION}) serves another file; check it with sha256sum and the file's page "
            f"on the Hub, delete it from the Hub cache to retry, {KAGGLE_ROUTE}"
        )


def safe_extract(archive: PathLike, dest: PathLike) -> None:
    """Extract a tar archive into ``dest``, refusing it whole if any member is unsafe.

    Unsafe: a path outside ``dest`` (``../x``, ``/x``), a symbolic or hard link (GTZAN's tarball
    has none, and links are how extraction escapes), or anything ``tarfile``'s ``data`` filter
    refuses (devices, ...). Nothing is extracted from a refused archive.
    """
    dest = Path(dest).resolve()
    try:
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                problem = _unsafe(member, dest)
                if problem:
                    raise UserError(
                        f"refusing to extract {archive}: member {member.name!r} {problem}"
                    )
            tar.extractall(dest, filter="data")
    except tarfile.TarError as err:
        raise UserError(f"cannot extract {archive} ({err}): delete it and re-run") from None


def _unsafe(member: tarfile.TarInfo, dest: Path) -> str:
    if Path(member.name).is_absolute() or not _inside(dest / member.name, dest):
        return f"is outside {dest}"
    if member.issym() or member.islnk():
        return f"is a link (to {member.linkname!r}); the archive should hold plain files"
    try:
        tarfile.data_filter(member, str(dest))
    except tarfile.FilterError as err:
        return f"is unsafe ({err})"
    return ""


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder)

"""Provenance hashes: what a result was computed from (code, settings, feature bytes, files)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent


def code_hash() -> str:
    """SHA-256 (12 hex digits) of this package's Python source, file names included.

    A sweep's study identity (a code edit starts a fresh study) and the executor's check that
    every node runs the driver's code.
    """
    digest = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def json_hash(value: Any, digits: int = 16) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys), cut to ``digits`` hex digits: the hash
    of a set of settings (the feature params, a study's identity)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:digits]


def files_hash(paths: Iterable[Path], digits: int = 16) -> str:
    """SHA-256 of the files' bytes one after another, in the given order, cut to ``digits`` hex digits."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:digits]


def file_sha256(path: Path) -> str:
    """The full SHA-256 hex digest of one file (a checkpoint, a copied artifact)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()

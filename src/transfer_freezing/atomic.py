"""Crash-safe writes: every output goes to a temporary sibling first and is renamed into place."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import UserError


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` only on success.

    Works for files and directories. A failure (or a kill) leaves ``target`` untouched and removes
    the temporary, so readers never see a half-written output.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp_item = tmp / target.name
    try:
        yield tmp_item
        _replace(tmp_item, target)
    except (OSError, RuntimeError) as err:
        if _disk_full(err, tmp):
            raise UserError(
                f"disk full while writing {target}: free space in {target.parent.resolve()} "
                "(or point the stage's out param to another disk) and re-run"
            ) from err
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_FULL = (errno.ENOSPC, errno.EDQUOT)
FULL_BELOW_BYTES = 1 << 20  # free space under which a failed write counts as "disk full"


def _disk_full(err: OSError | RuntimeError, folder: Path) -> bool:
    """Whether ``err`` means the file system is full.

    ``OSError`` says so with its errno. ``torch.save`` to a path reports a full disk as a
    ``RuntimeError`` ("unexpected pos ...") without errno: there the free space left next to the
    half-written temporary decides.
    """
    if isinstance(err, OSError):
        return err.errno in _FULL
    try:
        return shutil.disk_usage(folder).free < FULL_BELOW_BYTES
    except OSError:
        return False


def _replace(src: Path, dst: Path) -> None:
    if src.is_dir():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if dst.exists():
            os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

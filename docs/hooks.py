"""MkDocs hooks: the params reference must match the schema, and the pipeline's figures are pages' images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


def on_pre_build(config) -> None:
    check = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_params.py"), "--check"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise PluginError(check.stderr.strip() or check.stdout.strip())


def on_files(files: Files, config) -> Files:
    """reports/*.png (the committed demo's figures) served at reports/ beside the pages."""
    for png in sorted((ROOT / "reports").rglob("*.png")):
        uri = png.relative_to(ROOT).as_posix()
        files.append(File.generated(config, uri, abs_src_path=str(png)))
    return files

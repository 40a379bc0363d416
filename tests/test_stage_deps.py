"""What makes a stage stale: the code and params that decide its outputs, nothing else.

The project is committed with placeholder outputs (`dvc commit -f`), so DVC records every stage's
deps and params without training anything; then one edit at a time, `dvc status` must name exactly
the stages whose outputs that edit can change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, write_params

BIN = str(Path(sys.executable).parent)
PKG = "src/transfer_freezing"
TRAIN = {"train", "train_tuned", "train_cells", "sweep", "compare"}  # everything downstream of training


def _dvc(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """A git + DVC copy of the repository (tiny grid, both lr sources) whose lock holds every stage."""
    root = tmp_path_factory.mktemp("deps")
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(root, **{"train.cells": ["vit_demo/freeze_patch_0_5"]})
    _git("init", "-q", cwd=root)
    _dvc("init", "-q", cwd=root)
    _git("add", "-A", cwd=root)
    _git("commit", "-qm", "tiny", cwd=root)
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        outs = [Path(o.fs_path) for stage in repo.index.stages for o in stage.outs]
    for out in outs:  # a placeholder for every output: a folder for the data trees, else a file
        if out.suffix:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("placeholder\n")
        else:
            out.mkdir(parents=True, exist_ok=True)
            (out / "placeholder").write_text("placeholder\n")
    _dvc("commit", "-f", "-q", cwd=root)
    assert _stale(root) == set()
    return root


def _stale(root: Path) -> set[str]:
    """Stages (matrix stages by their family name) with changed deps or params."""
    status = json.loads(_dvc("status", "--json", cwd=root) or "{}")
    return {name.split("@")[0] for name, changes in status.items()
            if any(isinstance(c, dict) and ("changed deps" in c) for c in changes)}


def _edited(root: Path, rel: str, edit) -> set[str]:
    """The stale stages while ``edit`` (text -> text) is applied to ``rel``, then restored."""
    path = root / rel
    before = path.read_text()
    path.write_text(edit(before))
    try:
        return _stale(root)
    finally:
        path.write_text(before)


def _comment(text: str) -> str:
    return text + "\n# an edit that changes no behaviour\n"


def _docstring(text: str) -> str:
    first = text.index('"""') + 3
    return text[:first] + "Reworded: " + text[first:]


def test_editing_the_cli_or_an_unlisted_module_re_runs_nothing(committed):
    assert _edited(committed, f"{PKG}/cli.py", _comment) == set()
    for module in ("train/status.py", "study/ui.py", "model/catalogue.py"):
        assert _edited(committed, f"{PKG}/{module}", _docstring) == set(), module


@pytest.mark.parametrize("key, value", [
    ("train.checkpoint_seconds", 5), ("train.cpus_per_run", 2), ("train.gpus_per_run", 0.25),
    ("train.device", "cpu"), ("train.compile", True), ("features.workers", 2),
    ("sweep.heartbeat_seconds", 30)])
def test_a_runtime_knob_re_runs_nothing(committed, key, value):
    section, leaf = key.split(".")

    def change(text: str) -> str:
        tree = yaml.safe_load(text)
        tree[section][leaf] = value
        return yaml.safe_dump(tree, sort_keys=False)

    assert _edited(committed, "params.yaml", change) == set()


@pytest.mark.parametrize("module", ["train/core.py", "model/freezing.py"])
def test_editing_training_or_a_freeze_mode_re_runs_training_not_the_features(committed, module):
    assert _edited(committed, f"{PKG}/{module}", _comment) == TRAIN


def test_editing_the_spectrogram_code_re_runs_features_and_everything_after(committed):
    assert _edited(committed, f"{PKG}/data/features.py", _comment) == {"features"} | TRAIN

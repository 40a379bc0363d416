"""What makes a stage stale: the code and params that decide its outputs, nothing else.

The project is committed with placeholder outputs (`dvc commit -f`), so DVC records every stage's
deps and params without training anything; then one edit at a time, `dvc status` must name exactly
the stages whose outputs that edit can change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from conftest import REPO, write_params

sys.path.insert(0, str(REPO / "benchmarks"))
import status_scaling  # noqa: E402

BIN = str(Path(sys.executable).parent)
PKG = "src/transfer_freezing"
TRAIN = {"train", "train_tuned", "train_cells", "sweep", "compare"}  # everything downstream of training


def _dvc(*args: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"dvc {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """A git + DVC copy of the repository (tiny grid, both lr sources) whose lock holds every stage."""
    root = tmp_path_factory.mktemp("deps")
    params = yaml.safe_load(write_params(root, **{"grid.cells": ["vit_demo/freeze_patch_0_5"]}).read_text())
    status_scaling.placeholder_project(root, params)
    assert _stale(root) == set()
    return root


def _stale(root: Path) -> set[str]:
    """Stages (matrix stages by their family name) with changed deps or params."""
    status = json.loads(_dvc("status", "--json", cwd=root) or "{}")
    return {name.split("@")[0] for name, changes in status.items()
            if any(isinstance(c, dict) and ("changed deps" in c) for c in changes)}


def _edited(root: Path, edits: dict[str, Callable[[str], str]]) -> set[str]:
    """The stale stages while ``edits`` (file -> text -> text) are applied, then restored."""
    before = {rel: (root / rel).read_text() for rel in edits}
    for rel, edit in edits.items():
        (root / rel).write_text(edit(before[rel]))
    try:
        return _stale(root)
    finally:
        for rel, text in before.items():
            (root / rel).write_text(text)


def _comment(text: str) -> str:
    return text + "\n# an edit that changes no behaviour\n"


def _docstring(text: str) -> str:
    first = text.index('"""') + 3
    return text[:first] + "Reworded: " + text[first:]


def test_editing_the_cli_or_an_unlisted_module_re_runs_nothing(committed):
    assert _edited(committed, {f"{PKG}/cli.py": _comment}) == set()
    unlisted = ("train/status.py", "study/ui.py", "model/catalogue.py")
    assert _edited(committed, {f"{PKG}/{m}": _docstring for m in unlisted}) == set()


RUNTIME = {"runtime.checkpoint_seconds": 5, "runtime.cpus_per_run": 2, "runtime.gpus_per_run": 0.25,
           "runtime.device": "cpu", "runtime.compile": True, "runtime.feature_workers": 2,
           "runtime.sweep_heartbeat_seconds": 30}


def test_runtime_knobs_re_run_nothing(committed):
    def change(text: str) -> str:
        tree = yaml.safe_load(text)
        for key, value in RUNTIME.items():
            section, leaf = key.split(".")
            assert tree[section][leaf] != value, key
            tree[section][leaf] = value
        return yaml.safe_dump(tree, sort_keys=False)

    assert _edited(committed, {"params.yaml": change}) == set()


@pytest.mark.parametrize(("key", "value", "stale"), [
    ("train.momentum", 0.5, {"train", "train_cells", "train_tuned", "sweep"}),  # the recipe: every run
    ("train.lr", 0.5, {"train", "train_cells"}),  # fixed lr: not tuned cells, not sweeps
    ("train.epochs", 3, {"train", "train_cells", "train_tuned"}),  # a sweep trains sweep.epochs
    ("keep.weights", "none", {"train", "train_cells", "train_tuned"}),  # what model.pt holds
    ("sweep.n_trials", 3, {"sweep"}),
    ("split.seed", 2, {"features"}),  # downstream stages follow once the features change
    ("compare.confidence", 0.9, {"compare"}),
])
def test_a_params_edit_re_runs_the_stages_that_list_its_section_or_key(committed, key, value, stale):
    def change(text: str) -> str:
        tree = yaml.safe_load(text)
        section, leaf = key.split(".")
        assert tree[section][leaf] != value, key
        tree[section][leaf] = value
        return yaml.safe_dump(tree, sort_keys=False)

    assert _edited(committed, {"params.yaml": change}) == stale


@pytest.mark.parametrize("module", ["train/core.py", "model/freezing.py"])
def test_editing_training_or_a_freeze_mode_re_runs_training_not_the_features(committed, module):
    assert _edited(committed, {f"{PKG}/{module}": _comment}) == TRAIN


def test_editing_the_spectrogram_code_re_runs_features_and_everything_after(committed):
    assert _edited(committed, {f"{PKG}/data/features.py": _comment}) == {"features"} | TRAIN


def test_setting_the_groups_file_re_runs_the_features(committed):
    """split.groups is read by the features stage; DVC sees it through the stage's split section
    (the file's content is hashed into the features' params_hash instead: DVC has no optional deps)."""
    def grouped(text: str) -> str:
        tree = yaml.safe_load(text)
        assert tree["split"]["groups"] is None  # the committed params: no groups
        tree["split"]["groups"] = "data/artists.csv"
        return yaml.safe_dump(tree, sort_keys=False)

    assert _edited(committed, {"params.yaml": grouped}) == {"features"}

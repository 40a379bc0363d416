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
# A recipe setting of every recipe. The recipes stage's files lie under train.out, which compare
# reads whole: it is stale with them (and would re-run anyway, after the runs they change).
EVERY_RUN = {"recipes", "train", "train_cells", "train_tuned", "sweep", "compare"}


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


def _recipes(root: Path) -> None:
    """What `dvc repro` runs first after a params edit: the recipes stage (the resolved recipes)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-m", "transfer_freezing.cli", "recipes"], cwd=root, env=env, check=True,
                   capture_output=True)


def _edited(root: Path, edits: dict[str, Callable[[str], str]]) -> set[str]:
    """The stale stages while ``edits`` (file -> text -> text) are applied, then restored. A params
    edit reaches the train and sweep stages through the recipes stage's files: they are rewritten
    (as `dvc repro` would) before asking, and restored after."""
    before = {rel: (root / rel).read_text() for rel in edits}
    for rel, edit in edits.items():
        (root / rel).write_text(edit(before[rel]))
    try:
        if "params.yaml" in edits:
            _recipes(root)
        return _stale(root)
    finally:
        for rel, text in before.items():
            (root / rel).write_text(text)
        if "params.yaml" in edits:
            _recipes(root)


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
    ("train.momentum", 0.5, EVERY_RUN),  # the base recipe: every run
    ("train.lr", 0.5, {"recipes", "train", "train_cells", "compare"}),  # fixed lr: not tuned cells, sweeps
    ("train.epochs", 3, EVERY_RUN - {"sweep"}),  # a sweep trains sweep.epochs
    ("recipes.tuned", {"lr": "tuned", "momentum": 0.5}, {"recipes", "train_tuned", "sweep", "compare"}),
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


def test_a_new_recipe_setting_reaches_every_run_with_no_dvc_yaml_edit(committed, monkeypatch):
    """Issue #23: a new train.* setting touches the schema, the code that reads it and its test.
    Here one is added to the schema (in this process) and to params.yaml; dvc.yaml is unchanged and
    every train and sweep stage goes stale through its recipe file."""
    from transfer_freezing import config, recipes

    monkeypatch.setitem(config.SCHEMA, "train.new_setting", config.Setting(0, config.non_negative_int()))
    dvc_yaml = (committed / "dvc.yaml").read_text()

    def add(text: str) -> str:
        tree = yaml.safe_load(text)
        tree["train"]["new_setting"] = 1
        return yaml.safe_dump(tree, sort_keys=False)

    params = committed / "params.yaml"
    before = params.read_text()
    params.write_text(add(before))
    monkeypatch.chdir(committed)
    try:
        recipes.write(config.load("params.yaml"))
        assert _stale(committed) == EVERY_RUN
        assert (committed / "dvc.yaml").read_text() == dvc_yaml
    finally:
        params.write_text(before)
        _recipes(committed)
    assert _stale(committed) == set()


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


def test_the_committed_lock_records_exactly_the_committed_pipeline():
    # DVC keeps a lock entry of a stage that dvc.yaml no longer has (a renamed matrix, another
    # profile's cells): such entries are never read, yet every stage of every `dvc repro` parses
    # them again. The committed lock held 39 of them (9,407 lines for 25 stages) until pruned.
    names = set(_dvc("stage", "list", "--name-only", cwd=REPO).split())
    lock = set(yaml.safe_load((REPO / "dvc.lock").read_text())["stages"])
    assert lock == names, f"stale: {sorted(lock - names)}, missing: {sorted(names - lock)}"

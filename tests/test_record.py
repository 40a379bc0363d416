"""The executor's record of finished cells (train/record.py): what `dvc commit -f` does per stage,
after one collection and with one write of dvc.lock."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from transfer_freezing.train import record

from conftest import sh

STAGES = {f"cell{i}": {"cmd": f"echo {i} > out{i}.txt", "deps": ["in.txt"], "outs": [f"out{i}.txt"]}
          for i in range(3)}


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": STAGES}))
    (tmp_path / "in.txt").write_text("input\n")
    sh("git", "init", "-q", cwd=tmp_path)
    sh("dvc", "init", "-q", cwd=tmp_path)
    for i in range(3):  # the outputs exist, as a finished cell's do, but DVC has no record of them
        (tmp_path / f"out{i}.txt").write_text(f"{i}\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _dvc_status(root: Path) -> dict:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.status()


def test_the_named_stages_are_recorded_and_the_others_left_alone(project: Path) -> None:
    assert record.record(["cell0", "cell2"]) == 2
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"cell0", "cell2"}
    assert lock["cell2"]["outs"][0]["path"] == "out2.txt" and lock["cell2"]["deps"][0]["path"] == "in.txt"
    assert set(_dvc_status(project)) == {"cell1"}  # recorded stages are up to date, as after dvc commit
    assert (project / ".dvc/cache").is_dir() and any((project / ".dvc/cache").rglob("*"))


def test_an_unknown_stage_records_nothing(project: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "transfer_freezing.train.record", "cell0", "nope"],
                          cwd=project, capture_output=True, text=True)
    assert proc.returncode != 0 and "no such stage in dvc.yaml: nope" in proc.stderr
    assert not (project / "dvc.lock").exists()

"""`tfreeze status` classifies a cell from its folder, DVC's verdict and its MLflow runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from transfer_freezing.train import status

from conftest import write_params


@pytest.mark.parametrize("content", ["", "{not json", "{}", "[1, 2]"])
def test_an_unreadable_run_json_is_a_stale_cell_not_a_traceback(tmp_path: Path, content: str):
    (tmp_path / "run.json").write_text(content)
    cell = status._classify("train@m-f-1-0", tmp_path, changed=set(), runs=[])
    assert cell.state == "stale" and "run.json is unreadable" in cell.detail


def test_a_recorded_run_is_done_and_a_changed_stage_is_stale(tmp_path: Path):
    (tmp_path / "run.json").write_text('{"run_id": "abc"}')
    assert status._classify("train@m-f-1-0", tmp_path, changed=set(), runs=[]).state == "done"
    assert status._classify("train@m-f-1-0", tmp_path, changed={"train@m-f-1-0"}, runs=[]).state == "stale"
    assert status._classify("train@m-f-1-0", tmp_path / "absent", changed=set(), runs=[]).state == "missing"


def test_mlflow_is_asked_only_about_the_cells_that_are_not_done(tmp_path: Path, monkeypatch):
    from transfer_freezing import config, grid

    p = config.validate({"train.out": str(tmp_path / "models"), "grid.tuned_models": []})
    stages = grid.stages(p)
    first, *rest = stages.items()
    for cell, _ in rest:
        folder = grid.run_dir(tmp_path / "models", *cell)
        folder.mkdir(parents=True)
        (folder / "run.json").write_text('{"run_id": "r"}')
    asked: list[list[str]] = []
    monkeypatch.setattr(status, "dvc_changed", lambda names: set())
    monkeypatch.setattr(status, "mlflow_runs", lambda t, names: asked.append(names) or {})
    rows = status.cells(p)
    assert asked == [[first[1]]]
    assert [r.state for r in rows] == ["missing"] + ["done"] * len(rest)
    (grid.run_dir(tmp_path / "models", *first[0])).mkdir(parents=True)
    (grid.run_dir(tmp_path / "models", *first[0]) / "run.json").write_text('{"run_id": "r"}')
    asked.clear()
    assert {r.state for r in status.cells(p)} == {"done"} and asked == []  # no MLflow at all


# A command that reads params and files only: what it must not import (torch alone costs 1.5 s a
# process; `tfreeze recipes` runs in every `dvc repro`).
HEAVY = ("torch", "torchvision", "mlflow", "sklearn", "matplotlib")


@pytest.mark.parametrize("argv", [["--help"], ["recipes"], ["status"], ["profile", "paper"],
                                  ["features", "--set", "features.image_size=100000"]],
                         ids=["help", "recipes", "status", "profile", "bad-set"])
def test_light_commands_import_no_torch_nor_mlflow(argv: list[str], tmp_path: Path):
    # the demo's weights (the pretrain stage's file): validation checks them, torch-free
    write_params(tmp_path, **{"train.weights": "pretrain/{model}.pt", "pretrain.models": ["vit_demo"]})

    code = ("import sys\nfrom transfer_freezing import cli\ntry:\n    cli.main(sys.argv[1:])\n"
            "except SystemExit:\n    pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True)
    # status may ask MLflow about the cells that are not done (here every cell): only it, mlflow
    allowed = {"mlflow"} if argv == ["status"] else set()
    assert set(ast.literal_eval(proc.stderr.splitlines()[-1])) <= allowed, proc.stderr

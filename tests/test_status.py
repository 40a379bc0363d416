"""`tfreeze status` classifies a cell from its folder, DVC's verdict and its MLflow runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from transfer_freezing.train import status


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

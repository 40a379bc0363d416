"""``tfreeze status``: every cell of both train grids (fixed and tuned lr), done / resumable / failed /
running / missing.

Read from the records that decide it, never from guesses: DVC's own status of each train stage
(are its outputs those of its current deps and params?), the cell's resumable checkpoint
(``last.pt``) and, for the cells that are not done, the MLflow runs tagged with the cell's DVC
stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import grid, recipes
from ..config import Params
from ..grid import LAST
from . import tracking


@dataclass(frozen=True)
class CellStatus:
    stage: str
    state: str  # done | stale | resumable | failed | running | missing
    detail: str


def dvc_changed(stages: list[str]) -> set[str] | None:
    """Which of ``stages`` DVC reports as changed (None outside a DVC project).

    One status of the whole project, filtered here: DVC re-reads dvc.yaml and dvc.lock for every
    target it is given, so asking per stage costs time quadratic in the grid.
    """
    try:
        from dvc.exceptions import NotDvcRepoError
        from dvc.repo import Repo
    except ImportError:  # pragma: no cover - dvc is a dependency
        return None
    try:
        with Repo() as repo:
            changed = repo.status()
    except NotDvcRepoError:
        return None
    return set(changed) & set(stages)


def mlflow_runs(t: tracking.Tracking, stages: list[str]) -> dict[str, list]:
    """MLflow runs per DVC stage name, newest first ({} when the store or experiment is absent)."""
    if t.uri.startswith("sqlite:///") and not Path(t.uri.removeprefix("sqlite:///")).is_file():
        return {}  # no local store yet: nothing ran (and no need to import MLflow to say so)
    import mlflow

    client = mlflow.MlflowClient(t.uri)
    try:
        exp = client.get_experiment_by_name(t.experiment)
    except Exception:  # noqa: BLE001 - no store yet
        return {}
    if exp is None:
        return {}
    found: dict[str, list] = {s: [] for s in stages}
    for run in client.search_runs([exp.experiment_id], "tags.dvc_stage != ''", max_results=50_000,
                                  order_by=["attributes.start_time DESC"]):
        stage = run.data.tags.get("dvc_stage")
        if stage in found:
            found[stage].append(run)
    return found


def cells(p: Params) -> list[CellStatus]:
    """Every train cell (fixed-lr ``train@…`` and ``train_cells@…``, then tuned-lr ``train_tuned@…``).

    A cell is done on DVC's word (its outputs are those of its current deps and params) and its
    ``run.json``; MLflow is asked only why the other cells are not (failed, running), so the status
    of a finished study imports no MLflow. That a done cell's run is still in the store is
    ``tfreeze compare``'s check (it reads every run).
    """
    stages = grid.stages(p)
    changed = dvc_changed(list(stages.values()))
    if changed is not None:  # a recipe edited since its file was written: DVC sees it at the next repro
        edited = recipes.edited(p)
        changed |= {stage for cell, stage in stages.items() if cell.recipe in edited}
    out = Path(p["train"]["out"])
    folders = {stage: grid.run_dir(out, *cell) for cell, stage in stages.items()}
    open_cells = [stage for stage, folder in folders.items() if not _recorded(stage, folder, changed)]
    runs = mlflow_runs(tracking.Tracking.from_params(p), open_cells) if open_cells else {}
    return [_classify(stage, folder, changed, runs.get(stage, [])) for stage, folder in folders.items()]


def _recorded(stage: str, folder: Path, changed: set[str] | None) -> bool:
    """The cell's outputs are recorded and current: no resumable state, a run.json, DVC clean."""
    return (not (folder / LAST).is_file() and (folder / "run.json").is_file()
            and (changed is None or stage not in changed))


def _classify(stage: str, folder: Path, changed: set[str] | None, runs: list) -> CellStatus:
    latest = runs[0] if runs else None
    last = folder / LAST
    run_json = folder / "run.json"
    if last.is_file():
        from .checkpoint import checkpoint_epoch  # torch: only for a cell that has a resumable state

        epoch = checkpoint_epoch(last)
        where = f"after epoch {epoch + 1}" if epoch is not None else "checkpoint unreadable"
        return CellStatus(stage, "resumable", f"{where}; `dvc repro {stage}` continues it")
    if run_json.is_file() and (changed is None or stage not in changed):
        try:
            run_id = str(json.loads(run_json.read_text())["run_id"])
        except (ValueError, KeyError, TypeError):
            return CellStatus(stage, "stale", f"{run_json} is unreadable or names no run; "
                                              f"`dvc repro {stage}` re-runs the cell")
        return CellStatus(stage, "done", f"MLflow run {run_id}")
    if latest is not None and latest.info.status in ("FAILED", "KILLED"):
        why = latest.data.tags.get("error") or latest.data.tags.get("stopped") or ""
        return CellStatus(stage, "failed", f"{latest.info.status} {latest.info.run_id}: {why}"[:200])
    if latest is not None and latest.info.status == "RUNNING":
        return CellStatus(stage, "running", f"run {latest.info.run_id} (or killed before a checkpoint)")
    if run_json.is_file():
        return CellStatus(stage, "stale", "DVC: deps or params changed since it ran")
    return CellStatus(stage, "missing", "never run")


def report(p: Params) -> str:
    rows = cells(p)
    width = max(len(r.stage) for r in rows)
    lines = [f"{r.stage:<{width}}  {r.state:<9}  {r.detail}" for r in rows]
    counts = {s: sum(r.state == s for r in rows) for s in dict.fromkeys(r.state for r in rows)}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)

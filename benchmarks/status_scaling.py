"""`tfreeze status` against the size of the grid: one DVC collection, time linear in the cells.

Builds a git + DVC copy of the repository whose lock holds every stage of a grid of S seeds
(placeholder outputs recorded with `dvc commit -f`: nothing is trained), then measures, in one run:

- `status.dvc_changed` (one `repo.status()` over the project, filtered to the train stages),
- the way status asked before (`repo.status(targets=...)`, one target per train stage), on a few
  targets only: its cost per target is printed, and what a whole grid would cost is labelled a
  projection,
- the whole `tfreeze status` command (wall time, including imports and the MLflow lookup),
- the executor's recording of finished cells (`train/record.py`: one collection, one write of
  dvc.lock) over every train stage, and `dvc commit -f` given a few stages as targets (how the
  executor recorded before): its cost per stage, and the whole grid's labelled a projection,

at two grid sizes, and prints the ratios. Usage: python benchmarks/status_scaling.py [--seeds 6 17]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def _run(*cmd: str, cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def placeholder_project(root: Path, params: dict) -> Path:
    """A git + DVC copy of the repository with ``params`` whose dvc.lock records every stage.

    Every output is a placeholder (a folder for the data trees, else a one-line file) recorded
    with ``dvc commit -f``: DVC then holds each stage's deps and params as if it had run.
    """
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ("git", "-c", "user.email=t@t", "-c", "user.name=t")
    _run(*git, "init", "-q", cwd=root)
    _run(sys.executable, "-m", "dvc", "init", "-q", cwd=root)
    _run(*git, "add", "-A", cwd=root)
    _run(*git, "commit", "-qm", "placeholder project", cwd=root)
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        outs = [Path(o.fs_path) for stage in repo.index.stages for o in stage.outs]
    for out in outs:
        if out.suffix:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("{}\n" if out.suffix == ".json" else "placeholder\n")
        elif out.name != "recipes":
            out.mkdir(parents=True, exist_ok=True)
            (out / "placeholder").write_text("placeholder\n")
    # The resolved recipes are the train and sweep stages' deps: the real files (a fraction of a second).
    _run(sys.executable, "-m", "transfer_freezing.cli", "recipes", cwd=root)
    _run(sys.executable, "-m", "dvc", "commit", "-f", "-q", cwd=root)
    return root


def _grid_params(seeds: int) -> dict:
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    tree["grid"]["seeds"] = list(range(1, seeds + 1))
    tree["sweep"]["seeds"] = [1000 + s for s in (1, 2)]
    return tree


def measure(seeds: int, old_targets: int) -> dict:
    sys.path.insert(0, str(REPO / "src"))
    from dvc.repo import Repo

    from transfer_freezing import config, grid
    from transfer_freezing.train import record, status

    with tempfile.TemporaryDirectory() as tmp:
        root = placeholder_project(Path(tmp), _grid_params(seeds))
        cwd = os.getcwd()
        os.chdir(root)
        try:
            p = config.load("params.yaml")
            names = list(grid.stages(p).values())
            with Repo(str(root)) as repo:
                n_stages = len(repo.index.stages)
            t0 = time.perf_counter()
            changed = status.dvc_changed(names)
            one_pass = time.perf_counter() - t0
            assert changed == set(), changed
            t0 = time.perf_counter()
            with Repo() as repo:
                repo.status(targets=names[:old_targets])
            per_target = (time.perf_counter() - t0) / old_targets
            t0 = time.perf_counter()
            assert record.record(names) == len(names)
            recorded = time.perf_counter() - t0
        finally:
            os.chdir(cwd)
        t0 = time.perf_counter()
        _run(sys.executable, "-m", "dvc", "commit", "-f", "-q", *names[:old_targets], cwd=root)
        commit_per_stage = (time.perf_counter() - t0) / old_targets
        t0 = time.perf_counter()
        out = _run(str(Path(BIN) / "tfreeze"), "status", cwd=root)
        command = time.perf_counter() - t0
        assert out.splitlines()[-1] == f"{len(names)} stale", out.splitlines()[-1]  # run.json: {}
    return {"seeds": seeds, "dvc_stages": n_stages, "train_cells": len(names),
            "dvc_changed_s": round(one_pass, 3), "per_target_s": round(per_target, 3),
            "per_target_whole_grid_s_projected": round(per_target * len(names), 1),
            "tfreeze_status_s": round(command, 3), "record_all_train_stages_s": round(recorded, 2),
            "dvc_commit_per_stage_s": round(commit_per_stage, 3),
            "dvc_commit_whole_grid_s_projected": round(commit_per_stage * len(names), 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs=2, default=[6, 17], help="two grid sizes (grid.seeds)")
    ap.add_argument("--old-targets", type=int, default=5, help="targets timed the old way, per size")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here")
    args = ap.parse_args(argv)
    small, large = (measure(s, args.old_targets) for s in args.seeds)

    def ratio(key: str) -> float:
        return round(large[key] / small[key], 2)

    result = {"small": small, "large": large,
              "cells_ratio": round(large["train_cells"] / small["train_cells"], 2),
              "dvc_changed_ratio": round(large["dvc_changed_s"] / small["dvc_changed_s"], 2),
              "per_target_ratio": round(large["per_target_s"] / small["per_target_s"], 2),
              "tfreeze_status_ratio": round(large["tfreeze_status_s"] / small["tfreeze_status_s"], 2),
              "record_ratio": ratio("record_all_train_stages_s"),
              "dvc_commit_per_stage_ratio": ratio("dvc_commit_per_stage_s")}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()

"""Concurrent use of one local store: two training processes on one sqlite MLflow store, and two
sweep workers on one sqlite Optuna study, both started on a fresh (not yet created) store."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import mlflow
import optuna
import pytest

from conftest import TFREEZE, write_params

# Every test here runs `dvc repro`, a Ray grid or training subprocesses: minutes in all.
pytestmark = pytest.mark.slow


def _run_together(cmds: list[list[str]], cwd: Path) -> list[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "TFREEZE_KILL_AFTER_EPOCH"):
        env.pop(name, None)
    procs = [subprocess.Popen(c, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in cmds]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out
    return outs


def test_two_training_processes_share_one_sqlite_store(tiny: Path) -> None:
    cell = [TFREEZE, "train", "--model", "vit_demo", "--freeze", "freeze_patch_0_11", "--seed"]
    _run_together([cell + ["1"], cell + ["2"]], tiny)
    client = mlflow.MlflowClient(f"sqlite:///{tiny}/mlruns/mlflow.db")
    (exp,) = [e for e in client.search_experiments() if e.name == "tiny"]
    runs = client.search_runs([exp.experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == [f"vit_demo/freeze_patch_0_11/fixed/seed{k}/fold0" for k in (1, 2)]
    assert all(r.info.status == "FINISHED" and "scores/test_acc" in r.data.metrics for r in runs)
    for seed in (1, 2):
        run_dir = tiny / f"models/vit_demo/freeze_patch_0_11/fixed/seed{seed}/fold0"
        run_json = json.loads((run_dir / "run.json").read_text())
        assert run_json["run_id"] in {r.info.run_id for r in runs}


def test_two_sweep_workers_on_one_sqlite_study_lose_no_trials(tiny: Path) -> None:
    n = 4
    write_params(tiny, **{"sweep.n_trials": n, "sweep.epochs": 1})
    worker = [TFREEZE, "sweep", "--model", "vit_demo", "--freeze", "freeze_patch_0_11", "--shared"]
    _run_together([worker, worker], tiny)
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{tiny}/optuna.db")
    trials = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{tiny}/optuna.db").trials
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == n
    assert len({t.number for t in trials}) == len(trials)
    best = json.loads((tiny / "reports/sweep/vit_demo-freeze_patch_0_11-tuned.json").read_text())
    assert best["best_lr"] in {t.params["lr"] for t in done}


def test_train_jobs_reports_a_failed_cell_in_one_line(tiny: Path) -> None:
    from conftest import tfreeze

    proc = tfreeze("train", "--model", "vit_demo", "--freeze", "freeze_none", "--jobs", "2",
                   "--set", "train.batch_size=1000", cwd=tiny, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "2 of 2 runs failed" in proc.stderr

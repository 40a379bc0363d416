"""Scale-out: two `tfreeze sweep` workers share one study over PostgreSQL and an MLflow server.

Starts a throwaway PostgreSQL cluster and `mlflow server` on 127.0.0.1 (tests/services.py), runs
two worker processes at once on one tiny study and checks the study and MLflow afterwards.
Needs Debian's postgresql package: `.ci/services.sh` installs it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import services
from conftest import TFREEZE, write_params

pytestmark = [pytest.mark.services, pytest.mark.slow]

MODEL, FREEZE = "vit_demo", "freeze_none"
N = 6


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    reason = services.why_no_postgres()
    if reason:
        pytest.skip(reason)
    with services.postgres(("optuna", "mlflow")) as pg:
        artifacts = tmp_path_factory.mktemp("mlflow") / "artifacts"
        with services.mlflow_server(pg.url("mlflow"), artifacts) as tracking_url:
            yield pg, tracking_url


def test_two_workers_share_one_study(tiny: Path, servers) -> None:
    import mlflow
    import optuna

    pg, tracking_url = servers
    write_params(tiny, **{"sweep.n_trials": N, "sweep.epochs": 2, "runtime.sweep_heartbeat_seconds": 2,
                          "tracking.experiment": "scale-out"})
    env = {**os.environ, "OPTUNA_STORAGE": pg.url("optuna"), "MLFLOW_TRACKING_URI": tracking_url,
           "OMP_NUM_THREADS": "1"}
    env.pop("TFREEZE_KILL_AFTER_EPOCH", None)
    # --shared: the multi-process protocol (sweep_workers); two plain sweeps would each take the
    # other's running trial for one a killed sweep left (docs/sweep.md)
    cmd = [TFREEZE, "sweep", "--model", MODEL, "--freeze", FREEZE, "--shared"]
    t0 = time.monotonic()
    workers = [subprocess.Popen(cmd, cwd=tiny, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    outs = [w.communicate(timeout=540) for w in workers]
    wall = time.monotonic() - t0
    for w, (out, err) in zip(workers, outs, strict=True):
        assert w.returncode == 0, f"worker failed:\n{out}\n{err}"
    logs = [out + err for out, err in outs]
    assert pg.password not in "".join(logs), "the storage password leaked into the output"
    sys.stderr.write(f"two workers, {N} trials: {wall:.1f} s\n")

    # Optuna: exactly N finished trials, unique numbers, and both workers did some of them.
    result = json.loads((tiny / "reports" / "sweep" / f"{MODEL}-{FREEZE}-tuned.json").read_text())
    study = optuna.load_study(study_name=result["study"], storage=pg.url("optuna"))
    trials = study.get_trials()
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == N
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    assert all(t.user_attrs.get("over_budget") for t in trials if t.state.name == "FAIL")
    per_worker = [set(map(int, re.findall(r"Trial (\d+) (?:finished|pruned)", log))) for log in logs]
    assert per_worker[0] and per_worker[1], "one worker ran every trial: no concurrency was tested"
    assert per_worker[0].isdisjoint(per_worker[1])
    assert per_worker[0] | per_worker[1] == {t.number for t in done}

    # MLflow: one parent, one finished child per finished trial, all under that parent.
    client = mlflow.MlflowClient(tracking_url)
    exp = client.get_experiment_by_name("scale-out")
    (parent,) = client.search_runs([exp.experiment_id], "tags.sweep_role = 'parent'")
    assert parent.data.tags["optuna_study"] == result["study"]
    children = client.search_runs([exp.experiment_id], "tags.sweep_role = 'trial'", max_results=1000)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    finished = [c for c in children if c.data.tags.get("state") in ("complete", "pruned")]
    assert sorted(int(c.data.tags["optuna_trial"]) for c in finished) == sorted(t.number for t in done)
    assert len(children) == len(finished)  # nothing failed, nothing over budget trained
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_lr"] == pytest.approx(result["best_lr"])
    figures = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert figures == {"lr_vs_val_acc.png", "optimization_history.png"}

    # The best-lr file: written once (by the worker that finished the last trial), matching storage.
    assert sum("wrote reports/sweep/" in log for log in logs) == 1
    assert result["best_lr"] == study.best_trial.params["lr"]
    assert result["n_trials"] == N and result["storage"] == pg.url("optuna").replace(pg.password, "***")

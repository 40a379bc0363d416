"""The learning-rate sweep on sqlite: trial budget, resume after a kill, MLflow layout, bad input."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from transfer_freezing import cli, config
from transfer_freezing.train import stage as train_stage
from transfer_freezing.train import sweep

from conftest import tfreeze, write_params

MODEL, FREEZE = "vit_demo", "freeze_none"
N = 3


@pytest.fixture
def proj(tiny: Path, monkeypatch) -> Path:
    """The tiny project with sweep settings for these tests and absolute store URLs."""
    write_params(tiny, **{"sweep.n_trials": N, "sweep.epochs": 2, "runtime.sweep_heartbeat_seconds": 1,
                          "sweep.storage": f"sqlite:///{tiny}/optuna.db"})
    # Absolute: MLflow caches stores by URI, and every test has its own folder.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tiny}/mlruns/mlflow.db")
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    monkeypatch.delenv("TFREEZE_KILL_AFTER_EPOCH", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is fastest and steady on a shared machine
    yield tiny
    torch.set_num_threads(threads)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def params(**overrides) -> dict:
    return config.load("params.yaml", [f"{k}={v}" for k, v in overrides.items()])


def trials(p: dict):
    import optuna

    storage = p["sweep"]["storage"]
    (name,) = [n for n in optuna.get_all_study_names(storage) if n.startswith(f"{MODEL}-{FREEZE}-")]
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def finished(ts) -> list:
    return [t for t in ts if t.state.name in ("COMPLETE", "PRUNED")]


def runs(proj: Path, role: str) -> list:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{proj}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    return client.search_runs([exp.experiment_id], f"tags.sweep_role = '{role}'", max_results=1000)


def check_mlflow(proj: Path, ts, extra_failed: int = 0) -> None:
    """One parent; one child per finished trial under it; killed trials' children FAILED."""
    import mlflow

    (parent,) = runs(proj, "parent")
    children = runs(proj, "trial")
    assert len(children) == N + extra_failed
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    done = [c for c in children if c.data.tags.get("state") in ("complete", "pruned")]
    assert sorted(int(c.data.tags["optuna_trial"]) for c in done) == sorted(t.number for t in finished(ts))
    assert all(c.info.status == "FINISHED" for c in done)
    failed = [c for c in children if c.data.tags.get("state") == "failed"]
    assert len(failed) == extra_failed and all(c.info.status == "FAILED" for c in failed)
    for c in done:  # per run of the trial its own curve; the first run always finishes
        assert "lr" in c.data.params and c.data.params["seeds"] == "[101, 102]"
        assert (c.data.params["optimizer"], c.data.params["schedule"], c.data.params["augment"]) == (
            "sgd", "none", "False")
        first = mlflow.MlflowClient(f"sqlite:///{proj}/mlruns/mlflow.db").get_metric_history(
            c.info.run_id, "seed101/fold0/val_acc")
        assert [m.step for m in first] == [0, 1]
        reported = mlflow.MlflowClient(f"sqlite:///{proj}/mlruns/mlflow.db").get_metric_history(
            c.info.run_id, "mean_best_val_acc")
        assert [m.step for m in reported] == list(range(len(reported))) and 1 <= len(reported) <= 2
        if c.data.tags["state"] == "complete":
            per_run = [c.data.metrics[f"best_val_acc/seed{k}/fold0"] for k in (101, 102)]
            assert c.data.metrics["best_val_acc"] == pytest.approx(np.mean(per_run))
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["sweep_finalised_trials"] == str(N)
    assert {"best_lr", "best_val_acc"} <= set(parent.data.metrics)
    client = mlflow.MlflowClient(f"sqlite:///{proj}/mlruns/mlflow.db")
    figures = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert figures == {"lr_vs_val_acc.png", "optimization_history.png"}
    # trials train no model to keep: no logged model, no checkpoint artifact
    assert client.search_logged_models([parent.info.experiment_id]) == []
    for c in children:
        assert client.list_artifacts(c.info.run_id, "checkpoint") == []


@pytest.mark.slow
def test_partial_sweep_is_completed_and_rerun_adds_nothing(proj: Path, capsys) -> None:
    # A sweep stopped after one trial (here: n_trials=1), then the full one: only 2 more trials.
    first = sweep.run_study(params(**{"sweep.n_trials": 1}), MODEL, FREEZE)
    assert first["n_finished"] == 1
    p = params()
    result = sweep.run_study(p, MODEL, FREEZE)
    ts = trials(p)
    assert len(ts) == N and len(finished(ts)) == N
    assert [t.number for t in ts] == list(range(N))
    out = proj / "reports" / "sweep" / f"{MODEL}-{FREEZE}-tuned.json"
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(result))
    best = max((t for t in ts if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert written["best_lr"] == best.params["lr"] and written["best_value"] == best.value
    assert written["n_trials"] == N and len(written["trials"]) == N
    assert {r["state"] for r in written["trials"]} <= {"complete", "pruned"}
    assert all(p["sweep"]["lr_low"] <= r["lr"] <= p["sweep"]["lr_high"] for r in written["trials"])
    assert written["storage"] == p["sweep"]["storage"] and written["study"].startswith(f"{MODEL}-{FREEZE}-")
    check_mlflow(proj, ts)
    # a tuned-lr cell reads it
    tuned = train_stage.resolve_lr(p, MODEL, FREEZE, "tuned", 1)
    assert tuned == (best.params["lr"], {"lr_study": written["study"]})
    assert written["seeds"] == [101, 102] and all(len(r["runs"]) == 2 for r in written["trials"])

    # Rerun: nothing trains, nothing is rewritten, MLflow is unchanged.
    mtime = out.stat().st_mtime_ns
    capsys.readouterr()
    again = sweep.run_study(p, MODEL, FREEZE)
    said = capsys.readouterr().out
    assert "nothing to run" in said and "epoch 1/" not in said and "wrote" not in said
    assert again == result and out.stat().st_mtime_ns == mtime
    assert len(trials(p)) == N
    check_mlflow(proj, ts)


@pytest.mark.slow
def test_killed_worker_trial_is_failed_and_retried(proj: Path) -> None:
    # A `tfreeze sweep` worker SIGKILLs itself after its first trial's first epoch: that trial stays
    # RUNNING in storage, its MLflow run RUNNING. The next (lone) sweep fails it at once, retries
    # the same lr, and the study ends with exactly N finished trials.
    env = {"TFREEZE_KILL_AFTER_EPOCH": "0", "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    killed = tfreeze("sweep", "--model", MODEL, "--freeze", FREEZE, cwd=proj, env=env, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    p = params()
    (left,) = trials(p)
    assert left.state.name == "RUNNING" and left.number == 0
    assert not (proj / "reports" / "sweep").exists()

    sweep.run_study(p, MODEL, FREEZE)
    ts = trials(p)
    assert len(finished(ts)) == N
    assert ts[0].state.name == "FAIL"
    retried = [t for t in ts if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].params["lr"] == left.params["lr"]
    assert retried[0].state.name in ("COMPLETE", "PRUNED")
    assert len(ts) == N + 1  # the killed trial + N finished, nothing over budget
    check_mlflow(proj, ts, extra_failed=1)
    written = json.loads((proj / "reports" / "sweep" / f"{MODEL}-{FREEZE}-tuned.json").read_text())
    assert [r["state"] for r in written["trials"]].count("fail") == 1


@pytest.mark.parametrize("overrides, env, expected", [
    (["sweep.storage=postgresql+psycopg://alice:s3cret@127.0.0.1:1/optuna"], {},
     "Optuna storage postgresql+psycopg://alice:***@127.0.0.1:1/optuna failed: "),
    ([], {"OPTUNA_STORAGE": "nosuchdb://bob:hunter2@localhost/x"},
     "Optuna storage nosuchdb://bob:***@localhost/x failed: "),
    (["sweep.lr_low=0.1", "sweep.lr_high=0.01"], {}, "sweep.lr_low = 0.1 must be below sweep.lr_high"),
    (["sweep.n_trials=0"], {}, "sweep.n_trials = 0 is not allowed; expected an integer >= 1"),
])
def test_bad_input_is_one_line_before_any_work(proj: Path, capsys, monkeypatch, overrides, env,
                                               expected) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store = _files(proj / "mlruns")
    argv = ["sweep", "--model", MODEL, "--freeze", FREEZE]
    for item in overrides:
        argv += ["--set", item]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err, err
    assert "s3cret" not in err and "hunter2" not in err
    assert not (proj / "optuna.db").exists() and _files(proj / "mlruns") == store  # not opened


def test_unreachable_tracking_server_is_one_line(proj: Path, capsys, monkeypatch) -> None:
    from services import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert cli.main(["sweep", "--model", MODEL, "--freeze", FREEZE]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MLflow tracking server http://127.0.0.1:" in err


@pytest.mark.slow
def test_a_code_or_feature_change_starts_a_fresh_study(proj: Path, monkeypatch) -> None:
    import optuna

    p = params(**{"sweep.n_trials": 1})
    first = sweep.run_study(p, MODEL, FREEZE)
    with monkeypatch.context() as patched:
        patched.setattr(sweep, "code_hash", lambda: "edited-code")
        after_code = sweep.run_study(p, MODEL, FREEZE)
    assert after_code["study"] != first["study"]
    features = proj / "data" / "features" / "clips.npy"
    values = np.load(features)
    np.save(features, values[::-1].copy())  # same shape and params, other bytes
    after_data = sweep.run_study(p, MODEL, FREEZE)
    names = optuna.get_all_study_names(p["sweep"]["storage"])
    assert len({first["study"], after_code["study"], after_data["study"]}) == 3 and len(names) == 3
    for result in (after_code, after_data):
        (trial,) = result["trials"]
        assert trial["state"] in ("complete", "pruned")  # trained, not found finished

"""Training runs: deterministic, resumable after SIGKILL, fully logged in MLflow."""

import json
from pathlib import Path

import mlflow
import pytest

from transfer_freezing import config
from transfer_freezing.errors import UserError
from transfer_freezing.train import stage as train_stage

from conftest import tfreeze

CELL = ["--model", "vit_demo", "--freeze", "freeze_patch_0_5", "--seed", "1"]
RUN = Path("models/vit_demo/freeze_patch_0_5/seed1")


def _metrics(root: Path) -> dict:
    return json.loads((root / RUN / "metrics.json").read_text())


def test_train_writes_outputs_and_an_mlflow_run(tiny):
    metrics = train_stage.train(config.load("params.yaml"), "vit_demo", "freeze_patch_0_5", 1)
    run_info = json.loads((tiny / RUN / "run.json").read_text())
    assert (tiny / RUN / "model.pt").is_file() and not (tiny / RUN / "last.pt").exists()
    mlflow.set_tracking_uri(f"sqlite:///{tiny}/mlruns/mlflow.db")
    client = mlflow.MlflowClient()
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "vit_demo/freeze_patch_0_5/seed1"
    assert run.data.params["train.epochs"] == "2" and run.data.params["run.freeze"] == "freeze_patch_0_5"
    assert run.data.metrics["test_acc"] == metrics["test_acc"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [0, 1]
    assert {"git_commit", "git_dirty", "feature_hash", "dvc_stage"} <= set(run.data.tags)
    assert run.data.tags["dvc_stage"] == "train@vit_demo-freeze_patch_0_5-1"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/model.pt"]
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_same_seed_gives_identical_metrics(tiny):
    p = config.load("params.yaml")
    first = train_stage.train(p, "vit_demo", "freeze_none", 2)
    second = train_stage.train(p, "vit_demo", "freeze_none", 2)
    assert {k: v for k, v in first.items() if k != "wall_seconds"} == {
        k: v for k, v in second.items() if k != "wall_seconds"}


def test_sigkill_then_rerun_resumes_to_identical_metrics(tiny, tmp_path):
    args = ["train", *CELL, "--set", "train.epochs=3"]
    killed = tfreeze(*args, cwd=tiny, env={"TFREEZE_KILL_AFTER_EPOCH": "1"}, check=False)
    assert killed.returncode == -9 and (tiny / RUN / "last.pt").is_file()
    resumed = tfreeze(*args, cwd=tiny)
    assert "resuming vit_demo/freeze_patch_0_5/seed1 after epoch 2" in resumed.stdout
    clean = tfreeze(*args, "--set", f"train.out={tmp_path / 'clean'}", cwd=tiny)
    assert clean.returncode == 0
    clean_metrics = tmp_path / "clean" / RUN.relative_to("models") / "metrics.json"
    got, want = _metrics(tiny), json.loads(clean_metrics.read_text())
    for key in ("test_acc", "test_loss", "best_val_acc", "best_epoch"):
        assert got[key] == want[key]
    run_id = json.loads((tiny / RUN / "run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{tiny}/mlruns/mlflow.db")
    history = mlflow.MlflowClient().get_metric_history(run_id, "val_acc")
    assert sorted(m.step for m in history) == [0, 1, 2]


def test_bad_mode_gives_one_line(tiny):
    proc = tfreeze("train", "--model", "vit_demo", "--freeze", "freeze_everything", "--seed", "1",
                   cwd=tiny, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "tfreeze train: error: unknown freeze mode 'freeze_everything' for vit_demo; valid: freeze_none, "
        "freeze_patch, freeze_patch_0_2, freeze_patch_0_5, freeze_patch_0_8, freeze_patch_0_11 "
        "(or freeze_patch_0_<k>)"
    )


def test_unreachable_tracking_server_gives_one_line(tiny):
    proc = tfreeze("train", *CELL, cwd=tiny, env={"MLFLOW_TRACKING_URI": "http://user:secret@127.0.0.1:9"},
                   check=False)
    assert proc.returncode == 2
    assert "MLflow tracking server http://user:***@127.0.0.1:9 is unreachable" in proc.stderr
    assert "secret" not in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_bad_weights_path_gives_one_line(tiny):
    proc = tfreeze("train", *CELL, "--set", "train.weights=imagenet", "--set", "train.weights_path=nope.pth",
                   "--set", "features.image_size=224", cwd=tiny, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0


def test_batch_larger_than_train_split_is_refused(tiny):
    with pytest.raises(UserError, match="train.batch_size = 500 is larger than the train split"):
        train_stage.train(config.load("params.yaml", ["train.batch_size=500"]), "vit_demo", "freeze_none", 1)

"""Training runs: deterministic, resumable after SIGKILL, fully logged in MLflow."""

import json
from pathlib import Path

import mlflow
import pytest

from transfer_freezing import config
from transfer_freezing.errors import UserError
from transfer_freezing.train import stage as train_stage

from conftest import tfreeze, tfreeze_here

CELL = ["--model", "vit_demo", "--freeze", "freeze_patch_0_5", "--seed", "1"]
RUN = Path("models/vit_demo/freeze_patch_0_5/fixed/seed1/fold0")


def _logged_models(client, run_id: str) -> list:
    exp_id = client.get_run(run_id).info.experiment_id
    return client.search_logged_models([exp_id], filter_string=f"source_run_id = '{run_id}'")


def _metrics(root: Path) -> dict:
    return json.loads((root / RUN / "metrics.json").read_text())


def test_train_writes_outputs_and_an_mlflow_run(tiny, tmp_path):
    metrics = train_stage.train(config.load("params.yaml"), "vit_demo", "freeze_patch_0_5", 1)
    run_info = json.loads((tiny / RUN / "run.json").read_text())
    assert (tiny / RUN / "model.pt").is_file() and not (tiny / RUN / "last.pt").exists()
    mlflow.set_tracking_uri(f"sqlite:///{tiny}/mlruns/mlflow.db")
    client = mlflow.MlflowClient()
    run = client.get_run(run_info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "vit_demo/freeze_patch_0_5/fixed/seed1/fold0"
    assert run.data.params["train.epochs"] == "2" and run.data.params["run.freeze"] == "freeze_patch_0_5"
    assert run.data.metrics["scores/test_acc"] == metrics["test_acc"]
    assert run.data.metrics["scores/test_macro_f1"] == metrics["test_macro_f1"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "curves/val_acc")] == [0, 1]
    assert {"git_commit", "git_dirty", "feature_hash", "dvc_stage"} <= set(run.data.tags)
    groups = json.loads(Path(client.download_artifacts(run.info.run_id, "params/lr_groups.json",
                                                       str(tmp_path))).read_text())
    assert [g["group"] for g in groups] == ["all"] and groups[0]["lr"] == float(run.data.params["run.lr"])
    assert run.data.tags["dvc_stage"] == "train@vit_demo-freeze_patch_0_5-fixed-1-0"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert "evaluation/confusion_matrix.png" in artifacts
    assert run.data.tags["checkpoint_path"] == str(RUN / "model.pt")
    assert int(run.data.tags["checkpoint_bytes"]) == (tiny / RUN / "model.pt").stat().st_size
    # model.pt is the run's logged model, stored as a hard link to the workspace file (one inode)
    (logged,) = _logged_models(client, run.info.run_id)
    assert logged.name == "model" and logged.tags["checkpoint_sha256"] == run.data.tags["checkpoint_sha256"]
    assert [o.model_id for o in run.outputs.model_outputs] == [logged.model_id]
    stored = Path(logged.artifact_location.removeprefix("file://")) / "artifacts" / "model.pt"
    assert stored.stat().st_ino == (tiny / RUN / "model.pt").stat().st_ino
    assert not stored.stat().st_mode & 0o222  # read-only, as DVC protects its cache
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow
def test_same_seed_gives_identical_metrics(tiny):
    p = config.load("params.yaml")
    first = train_stage.train(p, "vit_demo", "freeze_none", 2)
    second = train_stage.train(p, "vit_demo", "freeze_none", 2)
    timing = ("wall_seconds", "checkpoint_io_share")
    assert {k: v for k, v in first.items() if k not in timing} == {
        k: v for k, v in second.items() if k not in timing}


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_to_identical_metrics(tiny, tmp_path, capsys):
    args = ["train", *CELL, "--set", "train.epochs=3"]
    killed = tfreeze(*args, cwd=tiny, env={"TFREEZE_KILL_AFTER_EPOCH": "1"}, check=False)
    assert killed.returncode == -9 and (tiny / RUN / "last.pt").is_file()
    code, out, err = tfreeze_here(capsys, *args)  # the rerun and the clean run: in this process
    assert code == 0 and "resuming vit_demo/freeze_patch_0_5/seed1/fold0 after epoch 2" in out, err
    assert tfreeze_here(capsys, *args, "--set", f"train.out={tmp_path / 'clean'}")[0] == 0
    clean_metrics = tmp_path / "clean" / RUN.relative_to("models") / "metrics.json"
    got, want = _metrics(tiny), json.loads(clean_metrics.read_text())
    for key in ("test_acc", "test_loss", "best_val_acc", "best_epoch"):
        assert got[key] == want[key]
    # diagnostics measure from the run's true start (rebuilt from seed), not the resume point
    resumed_diag, clean_diag = (json.loads((root / "diagnostics.json").read_text())["parts"]
                                for root in (tiny / RUN, clean_metrics.parent))
    for part, entry in clean_diag.items():
        assert resumed_diag[part] == pytest.approx(entry, rel=1e-6)
    run_id = json.loads((tiny / RUN / "run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{tiny}/mlruns/mlflow.db")
    history = mlflow.MlflowClient().get_metric_history(run_id, "curves/val_acc")
    assert sorted(m.step for m in history) == [0, 1, 2]
    assert len(_logged_models(mlflow.MlflowClient(), run_id)) == 1  # the resumed run logs it once


def test_bad_mode_gives_one_line(tiny, capsys):
    code, _, err = tfreeze_here(capsys, "train", "--model", "vit_demo", "--freeze", "freeze_everything",
                                "--seed", "1")
    assert code == 2
    assert err.strip() == (
        "tfreeze train: error: unknown freeze mode 'freeze_everything' for vit_demo; valid: freeze_none, "
        "freeze_patch, freeze_patch_0_<k> (k 0-11), freeze_patch[_0_<k>]_cls (class token frozen too), "
        "tune_<a>[_<b>] (blocks a-b + head, 0-11), bitfit, layernorm, lora_r<r>[_a<alpha>][_mlp] (alpha 8 "
        "by default), adapter_houlsby_w<w>, adapter_pfeiffer_w<w>, vpt_shallow_p<p>, vpt_deep_p<p>"
    )


def test_unreachable_tracking_server_gives_one_line(tiny):
    proc = tfreeze("train", *CELL, cwd=tiny, env={"MLFLOW_TRACKING_URI": "http://user:secret@127.0.0.1:9"},
                   check=False)
    assert proc.returncode == 2
    assert "MLflow tracking server http://user:***@127.0.0.1:9 is unreachable" in proc.stderr
    assert "secret" not in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_bad_weights_path_gives_one_line():
    # Where a model with weights is built (the train stage, `tfreeze models`): a UserError, which
    # the CLI prints as its one line. (This test used to run `tfreeze train` on vit_demo with
    # train.weights=imagenet, whose one line said that vit_demo has no weights: not this error.)
    from transfer_freezing.model import registry

    with pytest.raises(UserError) as err:
        registry.weights_file("vit_b_16", "nope.pth", "imagenet")
    assert str(err.value).startswith("train.weights_path = nope.pth: file not found; expected vit_b_16's ")
    assert "\n" not in str(err.value)


def test_batch_larger_than_train_split_is_refused(tiny):
    with pytest.raises(UserError, match="train.batch_size = 500 is larger than the train split"):
        train_stage.train(config.load("params.yaml", ["train.batch_size=500"]), "vit_demo", "freeze_none", 1)


def _runs(root: Path, stage: str) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    return client.search_runs([exp.experiment_id], f"tags.dvc_stage = '{stage}'", max_results=100)


STAGE = "train@vit_demo-freeze_patch_0_5-fixed-1-0"


@pytest.mark.slow
def test_resume_after_an_unrelated_params_change_continues_the_same_run(tiny, capsys):
    # Issue repro: the resumed run used to log every key of params.yaml and hit
    # "Changing param values is not allowed ... compare.confidence" with a traceback.
    killed = tfreeze("train", *CELL, cwd=tiny, env={"TFREEZE_KILL_AFTER_EPOCH": "0"}, check=False)
    assert killed.returncode == -9
    code, out, err = tfreeze_here(capsys, "train", *CELL, "--set", "compare.confidence=0.9")
    assert code == 0, err
    assert "resuming vit_demo/freeze_patch_0_5/seed1/fold0 after epoch 1" in out
    (run,) = _runs(tiny, STAGE)
    assert run.info.status == "FINISHED"
    assert run.info.run_id == json.loads((tiny / RUN / "run.json").read_text())["run_id"]
    assert "compare.confidence" not in run.data.params
    logged = {k for k in run.data.params if not k.startswith("run.")}
    assert {k.split(".")[0] for k in logged} <= set(train_stage.STAGE_PARAMS)  # the listed sections


def test_logged_params_are_exactly_the_keys_the_train_stage_lists():
    import yaml

    from transfer_freezing import grid, recipes

    from conftest import REPO

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    storage = train_stage.STORAGE_PARAMS
    for name in ("train", "train_cells", "train_tuned"):  # the recipe is a dep: its resolved file
        assert tuple(stages[name]["params"]) == ("tracking", *storage)
        assert "${train.out}/recipes/${item.recipe}.json" in stages[name]["deps"]
    # A run logs as train.* exactly the keys of its recipe's file (a tuned one's less train.lr).
    p = config.load(REPO / "params.yaml")
    for recipe, view in (("fixed", "train"), ("tuned", "train_tuned")):
        logged = train_stage.stage_params(config.recipe_params(p, recipe), grid.source_of(p, recipe))
        assert {k for k in logged if k.startswith("train.")} == {
            f"train.{k}" for k in recipes.resolved(p, recipe, view)}
        assert {k.split(".")[0] for k in logged} == {"train", "tracking"}


@pytest.mark.slow
def test_a_checkpoint_for_other_settings_says_which_and_closes_its_run(tiny, capsys):
    killed = tfreeze("train", *CELL, cwd=tiny, env={"TFREEZE_KILL_AFTER_EPOCH": "0"}, check=False)
    assert killed.returncode == -9
    (orphan,) = _runs(tiny, STAGE)
    assert orphan.info.status == "RUNNING"
    code, again, err = tfreeze_here(capsys, "train", *CELL, "--set", "train.lr=0.02")
    assert code == 0, err
    assert "ignoring models/vit_demo/freeze_patch_0_5/fixed/seed1/fold0/last.pt" in again
    assert "other settings (lr 0.01 -> 0.02)" in again
    assert again.count("ignoring") == 1
    by_id = {r.info.run_id: r for r in _runs(tiny, STAGE)}
    assert by_id[orphan.info.run_id].info.status == "KILLED"
    assert "lr 0.01 -> 0.02" in by_id[orphan.info.run_id].data.tags["stopped"]
    assert sorted(r.info.status for r in by_id.values()) == ["FINISHED", "KILLED"]


@pytest.mark.slow
def test_sigterm_marks_the_run_killed_and_keeps_the_checkpoint(tiny):
    import signal
    import subprocess
    import time

    from conftest import TFREEZE

    args = [TFREEZE, "train", *CELL, "--set", "train.epochs=50"]
    proc = subprocess.Popen(args, cwd=tiny, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tiny / RUN / "last.pt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err
    assert (tiny / RUN / "last.pt").is_file()
    (run,) = _runs(tiny, STAGE)
    assert run.info.status == "KILLED" and "Terminated" in run.data.tags["stopped"]


def test_features_are_an_mlflow_dataset_input(tiny):
    train_stage.train(config.load("params.yaml"), "vit_demo", "freeze_patch_0_11", 1)
    (run,) = _runs(tiny, "train@vit_demo-freeze_patch_0_11-fixed-1-0")
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "features:data/features"
    assert inp.dataset.digest == run.data.tags["feature_hash"]
    assert {t.key: t.value for t in inp.tags}["dvc_path"] == "data/features"


@pytest.mark.slow
def test_status_lists_done_resumable_failed_and_missing_cells(tiny, capsys, monkeypatch):
    p = config.load("params.yaml")
    train_stage.train(p, "vit_demo", "freeze_none", 1)
    tfreeze("train", "--model", "vit_demo", "--freeze", "freeze_none", "--seed", "2", cwd=tiny,
            env={"TFREEZE_KILL_AFTER_EPOCH": "0"}, check=False)
    monkeypatch.setenv("TFREEZE_FAIL_IN_EPOCH", "0")
    with pytest.raises(RuntimeError):  # the injected failure, as uncaught as a real one
        tfreeze_here(capsys, "train", "--model", "vit_demo", "--freeze", "freeze_patch_0_11", "--seed", "1")
    monkeypatch.delenv("TFREEZE_FAIL_IN_EPOCH")
    code, shown, err = tfreeze_here(capsys, "status")
    assert code == 0, err
    states = {line.split()[0]: line.split()[1] for line in shown.splitlines()[:-1]}
    assert states == {"train@vit_demo-freeze_none-fixed-1-0": "done",
                      "train@vit_demo-freeze_none-fixed-2-0": "resumable",
                      "train@vit_demo-freeze_patch_0_11-fixed-1-0": "failed",
                      "train@vit_demo-freeze_patch_0_11-fixed-2-0": "missing",
                      "train_tuned@vit_demo-freeze_none-tuned-1-0": "missing",
                      "train_tuned@vit_demo-freeze_none-tuned-2-0": "missing"}
    assert shown.splitlines()[-1] == "1 done, 1 resumable, 1 failed, 3 missing"


def test_a_linear_probe_checkpoint_is_kilobytes_and_rebuilds_the_trained_model(tiny):
    import torch

    from transfer_freezing.data.inputs import to_model_input
    from transfer_freezing.train import checkpoint

    p = config.load("params.yaml")
    metrics = train_stage.train(p, "vit_demo", "freeze_patch_0_11", 1)
    path = tiny / "models/vit_demo/freeze_patch_0_11/fixed/seed1/fold0/model.pt"
    assert path.stat().st_size < 32_000  # the head (1,930 weights), not the 5.5 M frozen ones
    assert metrics["checkpoint_bytes"] >= path.stat().st_size
    model = checkpoint.load_model(path).eval()
    test = train_stage.Workspace.from_params(p).features.load("test")
    with torch.no_grad():
        preds = model(to_model_input(test.images)).argmax(1)
    assert 100.0 * (preds == test.labels).float().mean().item() == pytest.approx(metrics["test_acc"])

    state = torch.load(path, weights_only=True)
    state["frozen_sha256"] = "0" * 64
    assert not path.stat().st_mode & 0o222  # read-only: its inode is also the run's MLflow artifact
    path.unlink()
    torch.save(state, path)
    with pytest.raises(UserError, match="other base weights"):
        checkpoint.load_model(path)


@pytest.mark.slow
def test_the_resumable_state_waits_for_its_interval(tiny):
    proc = tfreeze("train", *CELL, "--set", "runtime.checkpoint_seconds=3600", cwd=tiny,
                   env={"TFREEZE_KILL_AFTER_EPOCH": "0"}, check=False)
    assert proc.returncode == -9 and not (tiny / RUN / "last.pt").exists()
    every_epoch = tfreeze("train", *CELL, "--set", "runtime.checkpoint_seconds=0", cwd=tiny,
                          env={"TFREEZE_KILL_AFTER_EPOCH": "0"}, check=False)
    assert every_epoch.returncode == -9 and (tiny / RUN / "last.pt").is_file()


def test_dropped_weights_leave_a_record_that_a_rerun_reproduces(tiny):
    import hashlib

    from transfer_freezing.train import checkpoint

    first_seed = config.load("params.yaml", ["keep.weights=first_seed", "grid.seeds=[1, 2]"])
    dropped = tiny / RUN.parent.parent / "seed2" / "fold0" / "model.pt"
    train_stage.train(first_seed, "vit_demo", "freeze_patch_0_5", 2)  # not the first seed
    record = checkpoint.read_model(dropped)
    assert record["weights"] is None and dropped.stat().st_size < 20_000
    assert record["dropped"]["keep_weights"] == "first_seed" and record["dropped"]["bytes"] > 1_000_000
    with pytest.raises(UserError, match="holds no weights: keep.weights = 'first_seed'"):
        checkpoint.load_model(dropped)
    assert (dropped.parent / "diagnostics.json").is_file()  # read the weights before they went
    mlflow.set_tracking_uri(f"sqlite:///{tiny}/mlruns/mlflow.db")
    run = mlflow.get_run(json.loads((dropped.parent / "run.json").read_text())["run_id"])
    assert run.data.tags["weights_kept"] == "false"
    assert run.data.tags["checkpoint_sha256"] == record["dropped"]["sha256"]
    assert "keep.weights" not in run.data.params  # a tag, free to change on a resume
    client = mlflow.MlflowClient()
    assert _logged_models(client, run.info.run_id) == []  # no weights, no logged model: the record
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/model.pt"]
    with pytest.raises(UserError, match="holds no weights: keep.weights = 'first_seed'"):
        checkpoint.load_from_mlflow(run.info.run_id, dst=tiny / "fresh")

    train_stage.train(first_seed, "vit_demo", "freeze_patch_0_5", 1)  # the first seed keeps them
    assert checkpoint.read_model(tiny / RUN / "model.pt")["weights"]

    train_stage.train(config.load("params.yaml"), "vit_demo", "freeze_patch_0_5", 2)  # keep_weights all
    assert hashlib.sha256(dropped.read_bytes()).hexdigest() == record["dropped"]["sha256"]
    checkpoint.load_model(dropped)


def test_a_checkpoint_is_logged_once_per_run_and_a_stale_one_is_replaced(tiny):
    # A run resumed after it logged its checkpoint (killed before run.json) logs nothing again;
    # another file in the same run (a resumed run that trained on) replaces the stale model.
    import hashlib

    import torch

    from transfer_freezing.train import checkpoint, tracking

    train_stage.train(config.load("params.yaml"), "vit_demo", "freeze_patch_0_11", 1)
    path = tiny / "models/vit_demo/freeze_patch_0_11/fixed/seed1/fold0/model.pt"
    run_id = json.loads((path.parent / "run.json").read_text())["run_id"]
    mlflow.set_tracking_uri(f"sqlite:///{tiny}/mlruns/mlflow.db")
    client = mlflow.MlflowClient()
    (first,) = _logged_models(client, run_id)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    images = torch.zeros(1, 32, 32, dtype=torch.float16)
    with mlflow.start_run(run_id=run_id):
        assert tracking.log_checkpoint(path, sha, images, 10) == first.model_id
    assert [m.model_id for m in _logged_models(client, run_id)] == [first.model_id]

    other = tiny / "other" / "model.pt"
    other.parent.mkdir()
    torch.save({**checkpoint.read_model(path), "note": "trained on"}, other)
    other_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    with mlflow.start_run(run_id=run_id):
        replaced = tracking.log_checkpoint(other, other_sha, images, 10)
    (now,) = _logged_models(client, run_id)
    assert now.model_id == replaced != first.model_id and now.tags["checkpoint_sha256"] == other_sha


def test_keep_weights_policies():
    from transfer_freezing.train.checkpoint import keeps_weights

    assert [keeps_weights("first_seed", s, [8, 1]) for s in (8, 1)] == [True, False]
    assert keeps_weights("all", 3, [1]) and not keeps_weights("none", 1, [1])
    with pytest.raises(ValueError, match="keep_weights must be one of"):
        keeps_weights("some", 1, [1])


def test_loading_an_unknown_run_from_mlflow_gives_one_line(tmp_path):
    from transfer_freezing.train import checkpoint

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(UserError, match=f"MLflow run {'0' * 32} is not in the tracking store"):
        checkpoint.load_from_mlflow("0" * 32, tracking_uri=uri)


def _run(mode: str, fold: int, seed: int = 1, model: str = "vit_demo", **kw):
    from transfer_freezing.train import core as training

    return training.RunConfig(model=model, freeze=mode, seed=seed, epochs=1, batch_size=8, lr=0.01,
                              image_size=32, fold=fold, device="cpu", **kw)


def test_a_runs_torch_seed_follows_its_fold_cell_and_is_shared_by_the_arms_of_a_pair():
    import torch

    from transfer_freezing.train import core as training

    cpu = torch.device("cpu")

    def head(cfg):
        return training.setup(cfg, cpu)[0].heads.head.weight.detach()

    def order(cfg):
        return torch.randperm(100, generator=training.shuffler(cfg))

    # Seed 1 in two cells (fold 0 of repeat 0, fold 0 of repeat 1 with 3 folds): another head, another order.
    assert not torch.equal(head(_run("freeze_none", 0)), head(_run("freeze_none", 3)))
    assert not torch.equal(order(_run("freeze_none", 0)), order(_run("freeze_none", 3)))
    assert not torch.equal(head(_run("freeze_none", 3)), head(_run("freeze_none", 3, seed=2)))
    # Two modes in one cell (the arms of a pair): the same head initialisation and batch order.
    none, probe = _run("freeze_none", 4), _run("freeze_patch_0_11", 4)
    assert torch.equal(head(none), head(probe)) and torch.equal(order(none), order(probe))
    assert _run("freeze_0", 4, model="resnet_demo").torch_seed == none.torch_seed  # model-independent
    augmented = training.augmenter(_run("freeze_none", 4, augment=True))
    assert augmented is not None and augmented.seed == none.torch_seed
    # A stable hash of (seed, cell), never Python's hash(): these values must not change.
    assert [training.run_seed(1, 0), training.run_seed(1, 1), training.run_seed(2, 0)] == [
        4271719387712186581, 1213218640620147419, 4440702498803118267]
    assert _run("freeze_none", 0).key() != _run("freeze_none", 1).key()


def test_a_checkpoint_rebuilds_its_base_from_its_cells_seed_and_a_legacy_one_from_its_seed():
    from dataclasses import asdict

    import torch

    from transfer_freezing.model import freezing
    from transfer_freezing.model import registry as models
    from transfer_freezing.train import checkpoint

    cfg = _run("freeze_patch_0_5", 2)  # random frozen blocks: the hash sees the seed
    for seed, extra in ((cfg.torch_seed, {"torch_seed": cfg.torch_seed}), (cfg.seed, {})):
        torch.manual_seed(seed)
        model = models.build("vit_demo", 10, 32, "none", None)
        freezing.freeze(model, freezing.plan("vit_demo", cfg.freeze).prefixes)
        state = {"format": checkpoint.FORMAT, "weights": {}, "config": asdict(cfg), **extra,
                 "frozen_sha256": checkpoint.frozen_hash(model, checkpoint.changed_keys(model))}
        rebuilt = checkpoint.base_model(state, "model.pt")
        assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(),
                                                     model.state_dict().values(), strict=True))
    with pytest.raises(UserError, match="other base weights"):
        checkpoint.base_model({**state, "torch_seed": cfg.torch_seed}, "model.pt")


"""`dvc repro` end to end on a tiny offline study, and the compare stage's contract with MLflow."""

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest

from transfer_freezing.train import scores

from conftest import BIN, REPO, dvc_project, sh, tfreeze, tfreeze_here, write_params

# Every test here runs `dvc repro`, a Ray grid or training subprocesses: minutes in all.
pytestmark = pytest.mark.slow

# Both lr sources and a recipe axis in one workspace: the fixed-lr grid under two recipes (fixed: the
# base recipe; adamw: a named delta over it) and the tuned-lr grid. The fixed-lr probe is a cell of
# grid.cells (its own stage, train_cells@…), the rest the models x freeze_modes product.
RECIPES = {"fixed": {}, "adamw": {"optimizer": "adamw", "lr": 0.001}, "tuned": {"lr": "tuned"}}
BOTH = {"grid.tuned_freeze_modes": ["freeze_none", "freeze_patch_0_11"], "grid.freeze_modes": ["freeze_none"],
        "grid.cells": ["vit_demo/freeze_patch_0_11"], "recipes": RECIPES, "grid.recipes": ["fixed", "adamw"]}
CELLS = [(freeze, recipe, seed) for recipe in RECIPES
         for freeze in ("freeze_none", "freeze_patch_0_11") for seed in (1, 2)]
KILLED = "models/vit_demo/freeze_none/fixed/seed1/fold0"


@pytest.fixture(scope="module")
def repro(tmp_path_factory) -> Path:
    """A git + DVC copy of the repository with tiny params (both lr sources, two fixed-lr recipes),
    after one `dvc repro`."""
    root = tmp_path_factory.mktemp("pipeline")
    write_params(root, **BOTH)
    sh("dvc", "repro", cwd=dvc_project(root))
    return root


def test_repro_writes_table_figure_and_per_run_outputs(repro):
    # One `dvc repro`, three recipes: one table, each recipe judged against its own reference.
    table = pd.read_csv(repro / "reports/freezing_comparison.csv")
    assert list(zip(table["recipe"], table["freeze_mode"], strict=True)) == [
        ("fixed", "freeze_none"), ("fixed", "freeze_patch_0_11"), ("adamw", "freeze_none"),
        ("adamw", "freeze_patch_0_11"), ("tuned", "freeze_none"), ("tuned", "freeze_patch_0_11")]
    assert list(table["n"]) == [2] * 6
    assert (repro / "reports/freezing_comparison.png").stat().st_size > 10_000
    markdown = (repro / "reports/freezing_comparison.md").read_text()
    assert "freeze_patch_0_11" in markdown and "Decisive comparison: per-clip predictions" in markdown
    assert all(f"| vit_demo | {recipe}" in markdown for recipe in RECIPES)
    for source in RECIPES:
        judged = table.set_index(["recipe", "freeze_mode"]).loc[(source, "freeze_patch_0_11")]
        assert judged["verdict"] in ("better", "worse", "equivalent", "inconclusive")
        assert judged["low"] <= judged["estimate"] <= judged["high"] and judged["mdd"] > 0
        assert judged["n_runs"] == 2 and judged["n_clips"] == 20
    stats = json.loads((repro / "reports/freezing_stats.json").read_text())
    assert {"vit_demo/freeze_patch_0_11", "vit_demo/freeze_patch_0_11/tuned",
            "vit_demo/freeze_patch_0_11/adamw"} <= set(stats)
    # The mode x recipe interaction, per pair of recipes: with every run and clip paired, the
    # difference of the two recipes' estimates, judged with its own interval.
    mixed = pd.read_csv(repro / "reports/recipe_interaction.csv")
    assert list(zip(mixed["recipe_a"], mixed["recipe_b"], mixed["freeze_mode"], strict=True)) == [
        ("fixed", "adamw", "freeze_patch_0_11"), ("fixed", "tuned", "freeze_patch_0_11"),
        ("adamw", "tuned", "freeze_patch_0_11")]
    effect = table.set_index(["recipe", "freeze_mode"])["estimate"]
    for row in mixed.to_dict("records"):
        assert row["estimate"] == pytest.approx(effect[row["recipe_b"], "freeze_patch_0_11"]
                                                - effect[row["recipe_a"], "freeze_patch_0_11"])
        assert row["low"] <= row["estimate"] <= row["high"] and row["n_runs"] == 2
        assert row["verdict"] in ("better", "worse", "equivalent", "inconclusive")
    assert "### Mode × recipe interaction" in markdown
    assert "(freeze_patch_0_11 − freeze_none) under adamw minus under fixed" in markdown
    runs = pd.read_csv(repro / "reports/freezing_runs.csv")
    for freeze in ("freeze_none", "freeze_patch_0_11"):
        sweep = json.loads((repro / f"reports/sweep/vit_demo-{freeze}-tuned.json").read_text())
        assert sweep["seeds"] == [101, 102] and sweep["folds"] == [0]
        for trial in sweep["trials"]:  # a trial's value: the mean over its (seed, fold) runs
            assert [(r["seed"], r["fold"]) for r in trial["runs"]] == [(101, 0), (102, 0)]
            if trial["state"] == "complete":
                assert trial["value"] == pytest.approx(np.mean([r["best_val_acc"] for r in trial["runs"]]))
        tuned = runs[(runs["lr_source"] == "tuned") & (runs["freeze_mode"] == freeze)]
        assert len(tuned) == 2 and (tuned["lr"] == sweep["best_lr"]).all()
    assert (runs.loc[runs["recipe"] == "fixed", "lr"] == 0.01).all()
    assert (runs.loc[runs["recipe"] == "adamw", "lr"] == 0.001).all()
    assert set(runs.loc[runs["recipe"] == "adamw", "lr_source"]) == {"fixed"}
    assert (repro / "reports/freezing_forest.png").stat().st_size > 10_000
    assert (repro / "reports/freezing_depth.png").stat().st_size > 10_000
    floor = pd.read_csv(repro / "reports/baseline.csv")
    assert list(floor["cell"]) == [0] and floor["test_acc"].iloc[0] > 20  # chance is 10 %
    assert "**Floor to beat:**" in markdown
    diag = pd.read_csv(repro / "reports/freezing_diagnostics.csv")
    probe = diag[(diag["freeze_mode"] == "freeze_patch_0_11") & (diag["recipe"] == "fixed")]
    probe = probe.set_index("part")
    assert (probe.drop("head")["weight_change"] == 0).all() and probe.loc["head", "weight_change"] > 0
    assert np.allclose(probe["cka"].dropna(), 1.0) and set(probe["n_runs"]) == {2}
    assert "### Why: weight change and representation change per block" in markdown
    assert "### Scores beyond accuracy (test clips)" in markdown  # read from MLflow's scores/ section
    judged = table.set_index(["recipe", "freeze_mode"]).loc[("fixed", "freeze_patch_0_11")]
    assert judged["test_nll_low"] <= judged["test_nll_estimate"] <= judged["test_nll_high"]
    assert (repro / "reports/freezing_diagnostics.png").stat().st_size > 10_000
    for freeze, source, seed in CELLS:
        run = repro / f"models/vit_demo/{freeze}/{source}/seed{seed}/fold0"
        assert {"model.pt", "metrics.json", "run.json", "history.csv", "predictions.csv",
                "diagnostics.json"} <= {
            p.name for p in run.iterdir()}
        preds = pd.read_csv(run / "predictions.csv")
        assert preds.groupby("split").size().to_dict() == {"test": 20, "val": 20}
        probs = preds.filter(regex="^p_")
        assert probs.shape[1] == 10 and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
        metrics = json.loads((run / "metrics.json").read_text())
        test = preds[preds["split"] == "test"]
        assert metrics["test_acc"] == pytest.approx(100 * test["correct"].mean())
        probs = test.filter(regex="^p_")  # class order = the metrics' class indices
        labels = test["label"].map(lambda c, cols=list(probs.columns): cols.index(f"p_{c}")).to_numpy()
        again = scores.scores(labels, probs.to_numpy(), 10)  # from the stored (rounded) probabilities
        assert {k: metrics[f"test_{k}"] for k in again} == pytest.approx(again, rel=1e-3, abs=1e-3)
    split = pd.read_csv(repro / "data/split.csv")
    assert list(split.columns) == ["repeat", "fold", "clip_id", "genre"]
    assert (repro / "reports/sweep/vit_demo-freeze_none-tuned.json").is_file()


def test_a_runs_checkpoint_round_trips_through_mlflow_as_one_inode(repro, tmp_path, monkeypatch):
    """The run's logged model, downloaded through the MLflow client into a fresh folder, is the
    workspace model; under `dvc repro` the workspace file, DVC's cache and MLflow share its inode."""
    import torch
    from mlflow.entities import LoggedModelStatus

    from transfer_freezing import config
    from transfer_freezing.data.inputs import to_model_input
    from transfer_freezing.train import checkpoint
    from transfer_freezing.train.stage import Workspace

    run_dir = repro / "models/vit_demo/freeze_none/fixed/seed1/fold0"
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    uri = f"sqlite:///{repro}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    (logged,) = client.search_logged_models([run.info.experiment_id], f"source_run_id = '{run_id}'")
    assert logged.name == "model" and logged.status == LoggedModelStatus.READY
    assert logged.tags["checkpoint_sha256"] == run.data.tags["checkpoint_sha256"]
    stored = Path(logged.artifact_location.removeprefix("file://")) / "artifacts/model.pt"
    cached = [p for p in (repro / ".dvc/cache").rglob("*") if p.is_file()
              and p.stat().st_ino == (run_dir / "model.pt").stat().st_ino]
    assert stored.stat().st_ino == (run_dir / "model.pt").stat().st_ino and len(cached) == 1
    assert (run_dir / "model.pt").stat().st_nlink == 3  # workspace, DVC cache, MLflow: one copy

    fresh = tmp_path / "fresh"
    from_mlflow = checkpoint.load_from_mlflow(run_id, tracking_uri=uri, dst=fresh).eval()
    assert (fresh / "model.pt").stat().st_ino != stored.stat().st_ino  # a download
    monkeypatch.chdir(repro)
    test = Workspace.from_params(config.load("params.yaml")).features.load_cell(0)["test"]
    with torch.no_grad():
        got = from_mlflow(to_model_input(test.images))
        want = checkpoint.load_model(run_dir / "model.pt").eval()(to_model_input(test.images))
    assert torch.equal(got, want)
    preds = pd.read_csv(run_dir / "predictions.csv").query("split == 'test'").set_index("clip_id")
    classes = [c.removeprefix("p_") for c in preds.filter(regex="^p_").columns]
    assert [classes[i] for i in got.argmax(1).tolist()] == preds.loc[test.clip_ids, "pred"].tolist()
    # MLflow's own call: the pyfunc takes stored images and gives the run's probabilities
    previous = mlflow.get_tracking_uri()  # other tests in this process may have set one: it wins over the env
    mlflow.set_tracking_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    finally:
        mlflow.set_tracking_uri(previous)
    probs = pyfunc.predict(test.images.numpy())
    assert np.allclose(probs, preds.loc[test.clip_ids].filter(regex="^p_").to_numpy(), atol=1e-5)


def test_second_repro_does_nothing_and_status_is_clean(repro):
    again = sh("dvc", "repro", cwd=repro)
    assert "Data and pipelines are up to date" in again.stdout
    assert "up to date" in sh("dvc", "status", cwd=repro).stdout
    env = {"PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    status = tfreeze("status", cwd=repro, env=env).stdout
    assert status.splitlines()[-1] == "12 done"
    assert re.search(r"^train_cells@vit_demo/freeze_patch_0_11-fixed-2-0 +done +MLflow run ", status, re.M)


def _status_after(repro: Path, edit: Callable[[str], str]) -> str:
    """`dvc status` with params.yaml edited and the recipes rewritten (the recipes stage, which `dvc
    repro` runs first: a recipe reaches its train and sweep stages as its file); then restored."""
    params = repro / "params.yaml"
    original = params.read_text()
    params.write_text(edit(original))
    try:
        tfreeze("recipes", cwd=repro)
        return sh("dvc", "status", cwd=repro).stdout
    finally:
        params.write_text(original)
        tfreeze("recipes", cwd=repro)


def test_changing_a_training_param_reruns_training_not_features(repro):
    status = sh("dvc", "status", "--json", cwd=repro)  # baseline clean
    assert status.stdout.strip() in ("{}", "")
    params = repro / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("momentum: 0.9", "momentum: 0.8"))
    try:  # before the recipes stage re-runs, DVC sees only it changed; tfreeze status sees the cells
        assert "train@" not in sh("dvc", "status", cwd=repro).stdout
        env = {"PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
        shown = tfreeze("status", cwd=repro, env=env).stdout
        assert re.search(r"^train@vit_demo-freeze_none-adamw-1-0 +stale ", shown, re.M), shown
    finally:
        params.write_text(original)
    changed = _status_after(repro, lambda text: text.replace("momentum: 0.9", "momentum: 0.8"))
    assert "train@vit_demo-freeze_none-fixed-1-0" in changed and "features:" not in changed
    assert "train@vit_demo-freeze_none-adamw-1-0" in changed
    assert "train_tuned@vit_demo-freeze_none-tuned-1-0" in changed
    assert "train_cells@vit_demo/freeze_patch_0_11-fixed-1-0" in changed
    # One recipe's setting re-runs that recipe's cells only.
    changed = _status_after(repro, lambda text: text.replace("optimizer: adamw",
                                                             "optimizer: adamw\n    momentum: 0.5"))
    assert "train@vit_demo-freeze_none-adamw-1-0" in changed and "-fixed-" not in changed
    assert "train_tuned@" not in changed and "sweep@" not in changed


def test_each_lr_source_reruns_on_its_own_lr_only(repro):
    # train.lr is the fixed cells' lr, not the tuned ones' (nor a recipe's that sets its own); a sweep
    # result is the tuned cells' only.
    changed = _status_after(repro, lambda text: text.replace("lr: 0.01", "lr: 0.02"))
    assert "train@vit_demo-freeze_none-fixed-1-0" in changed and "train_tuned@" not in changed
    assert "train_cells@vit_demo/freeze_patch_0_11-fixed-2-0" in changed and "-adamw-" not in changed
    result = repro / "reports/sweep/vit_demo-freeze_none-tuned.json"
    written = result.read_text()
    result.write_text(written.replace('"best_lr": ', '"best_lr": 1e-4, "was": '))
    try:
        changed = sh("dvc", "status", cwd=repro).stdout
        assert "train_tuned@vit_demo-freeze_none-tuned-1-0" in changed
        assert "train_tuned@vit_demo-freeze_patch_0_11-tuned-1-0" not in changed and "train@" not in changed
        assert "train_cells@" not in changed
    finally:
        result.write_text(written)


def test_metrics_show_lists_every_run(repro):
    shown = sh("dvc", "metrics", "show", cwd=repro).stdout
    assert "test_acc" in shown and "seed2/fold0/metrics.json" in shown


def test_compare_names_the_stage_when_its_mlflow_run_is_gone(repro, tmp_path, capsys, monkeypatch):
    work = tmp_path / "copy"
    shutil.copytree(repro, work, symlinks=True)
    run_id = pd.read_csv(work / "reports/freezing_runs.csv")["run_id"].iloc[0]
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    mlflow.MlflowClient().delete_run(run_id)
    monkeypatch.chdir(work)
    code, _, err = tfreeze_here(capsys, "compare")
    assert code == 2
    assert err.strip().endswith("re-run: dvc repro -f train@vit_demo-freeze_none-fixed-1-0")
    assert err.strip().count("\n") == 0


def test_compare_from_the_original_csv_reproduces_its_numbers(tmp_path, capsys, monkeypatch):
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    csv = REPO / "tests/data/seed_results_summary.csv"
    assert tfreeze_here(capsys, "compare", "--from-csv", str(csv), "--out", str(tmp_path / "out"))[0] == 0
    table = pd.read_csv(tmp_path / "out/freezing_comparison.csv").set_index("freeze_mode")
    assert table.loc["freeze_none", "test_mean"] == pytest.approx(71.6, abs=0.05)
    assert table.loc["freeze_patch_0_11", "test_mean"] == pytest.approx(63.1, abs=0.05)
    assert table.loc["freeze_patch_0_5", "pvalue_runs_independent_t"] == pytest.approx(0.253, abs=0.002)
    assert (tmp_path / "out/freezing_comparison.png").is_file()
    assert "No diagnostics" in (tmp_path / "out/freezing_comparison.md").read_text()
    assert (tmp_path / "out/freezing_diagnostics.png").is_file()


def test_compare_from_the_original_csv_prints_its_val_test_disagreement_and_a_plan(tmp_path, capsys,
                                                                                  monkeypatch):
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    csv = str(REPO / "tests/data/seed_results_summary.csv")
    code, said, err = tfreeze_here(capsys, "compare", "--from-csv", csv, "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert "sign flips between val and test: freeze_patch" in said
    assert "freeze_patch +2.6 val / -2.5 test" in said
    code, planned, err = tfreeze_here(capsys, "compare", "--plan", "1.6", "--from-csv", csv)
    assert code == 0, err
    line = next(x for x in planned.splitlines() if " freeze_patch_0_5 vs freeze_none" in x)
    assert line.split(": ", 1)[1].startswith("55 runs")


def test_dvc_yaml_lists_every_stage_as_a_tfreeze_subcommand():
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {"data", "features", "pretrain", "recipes", "train", "train_cells", "train_tuned",
                           "compare", "sweep"}
    for name, stage in stages.items():  # the three train stages: one subcommand, three grids
        assert stage["cmd"].split()[:2] == ["tfreeze", name.split("_")[0]]


def test_dvc_exp_run_with_a_changed_param_retrains_and_records_the_experiment(repro, tmp_path):
    work = tmp_path / "exp"
    shutil.copytree(repro, work, symlinks=True)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A", cwd=work)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "lock", cwd=work)
    # grid.tuned_models=[] turns the tuned-lr study off: its stages leave the pipeline, compare drops
    # its rows.
    ran = sh("dvc", "exp", "run", "-n", "one-epoch", "-S", "train.epochs=1", "-S", "grid.tuned_models=[]",
             "-S", "grid.seeds=[1]", "-S", "grid.recipes=[fixed]", "-S", "grid.cells=[]", cwd=work).stdout
    assert "Running stage 'train@vit_demo-freeze_none-fixed-1-0'" in ran
    assert "Running stage 'features'" not in ran
    assert "Running stage 'train_tuned@" not in ran
    shown = sh("dvc", "exp", "show", "--csv", cwd=work).stdout
    assert "one-epoch" in shown
    metrics = pd.read_csv(work / "reports/freezing_runs.csv")
    assert len(metrics) == 1 and set(metrics["lr_source"]) == {"fixed"}
    assert (work / "models/vit_demo/freeze_none/fixed/seed1/fold0/history.csv").read_text().count("\n") == 2


def test_seeds_trained_side_by_side_are_recorded_with_dvc_commit(repro, tmp_path):
    """README's GPU route: `tfreeze train --jobs N` (Ray) for a mode's seeds records them with
    `dvc commit` itself; `dvc repro` then runs only the rest."""
    work = tmp_path / "jobs"
    shutil.copytree(repro, work, symlinks=True)
    write_params(work, **BOTH, **{"train.epochs": 1, "grid.tuned_models": []})  # fixed cells only
    env = {"PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    # The listed probe (grid.cells): its stages are named train_cells@<model>/<mode>-<seed>-<fold>.
    out = tfreeze("train", "--cell", "vit_demo/freeze_patch_0_11", "--recipe", "fixed", "--jobs", "2",
                  cwd=work, env=env)
    assert "recorded 3 stage(s) in dvc.lock (dvc commit)" in out.stdout  # and the recipes stage
    cells = ["train_cells@vit_demo/freeze_patch_0_11-fixed-1-0",
             "train_cells@vit_demo/freeze_patch_0_11-fixed-2-0"]
    assert "up to date" in sh("dvc", "status", *cells, cwd=work).stdout
    # what `dvc repro` would run (--dry: DVC's own decision, without training the rest again)
    ran = sh("dvc", "repro", "--dry", cwd=work).stdout
    assert "Running stage 'train@vit_demo-freeze_none-fixed-1-0'" in ran
    assert not any(f"Running stage '{cell}'" in ran for cell in cells)
    history = work / "models/vit_demo/freeze_patch_0_11/fixed/seed2/fold0/history.csv"
    assert history.read_text().count("\n") == 2
    client = mlflow.MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")  # the seeds' runs, side by side
    for seed in (1, 2):
        folder = work / f"models/vit_demo/freeze_patch_0_11/fixed/seed{seed}/fold0"
        run = json.loads((folder / "run.json").read_text())
        assert client.get_run(run["run_id"]).info.status == "FINISHED"


def test_compare_shows_fixed_and_tuned_lr_studies_side_by_side(tmp_path, capsys, monkeypatch):
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    fixed = pd.read_csv(REPO / "tests/data/seed_results_summary.csv")
    tuned = fixed.drop(columns="timestamp").assign(lr_source="sweep", test_acc=fixed["test_acc"] + 1.0)
    tuned.to_csv(tmp_path / "tuned_runs.csv", index=False)
    assert tfreeze_here(capsys, "compare", "--from-csv", str(REPO / "tests/data/seed_results_summary.csv"),
                        str(tmp_path / "tuned_runs.csv"), "--out", str(tmp_path / "out"))[0] == 0
    table = pd.read_csv(tmp_path / "out/freezing_comparison.csv")
    by_source = table.set_index(["recipe", "freeze_mode"])["test_mean"]
    assert set(table["recipe"]) == {"fixed", "sweep"}
    assert by_source["sweep", "freeze_none"] == pytest.approx(by_source["fixed", "freeze_none"] + 1.0)


def _copy(repro: Path, dest: Path, **params) -> Path:
    shutil.copytree(repro, dest, symlinks=True)
    if params:
        write_params(dest, **BOTH, **params)
    return dest


def _commit(work: Path, message: str) -> None:
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A", cwd=work)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message, cwd=work)


def _stage_runs(work: Path, stage: str) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("tiny")
    return client.search_runs([exp.experiment_id], f"tags.dvc_stage = '{stage}'", max_results=100)


def test_a_train_stage_killed_under_dvc_repro_resumes_into_the_same_run(repro, tmp_path):
    # Issue repro: `dvc repro` deletes model.pt before it runs a stage, and the resume check
    # required it, so the next `dvc repro` printed "ignoring ... other settings" and began again.
    work = _copy(repro, tmp_path / "kill", **{"train.epochs": 3})
    stage = "train@vit_demo-freeze_none-fixed-1-0"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "TFREEZE_KILL_AFTER_EPOCH": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    sh("dvc", "repro", "-s", "recipes", cwd=work)  # the train.epochs edit reaches the stage through it
    killed = subprocess.run(["dvc", "repro", "-s", stage], cwd=work, env=env, capture_output=True, text=True)
    assert killed.returncode != 0 and (work / KILLED / "last.pt").is_file()
    (orphan,) = [r for r in _stage_runs(work, stage) if r.info.status == "RUNNING"]

    resumed = sh("dvc", "repro", "-s", stage, cwd=work).stdout
    assert "resuming vit_demo/freeze_none/seed1/fold0 after epoch 2" in resumed and "ignoring" not in resumed

    run_id = json.loads((work / KILLED / "run.json").read_text())["run_id"]
    assert run_id == orphan.info.run_id
    statuses = {r.info.run_id: r.info.status for r in _stage_runs(work, stage)}
    assert statuses[run_id] == "FINISHED" and "RUNNING" not in statuses.values()
    client = mlflow.MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    exp_id = client.get_run(run_id).info.experiment_id
    assert len(client.search_logged_models([exp_id], f"source_run_id = '{run_id}'")) == 1  # logged once
    clean = tmp_path / "clean"
    tfreeze("train", "--model", "vit_demo", "--freeze", "freeze_none", "--seed", "1",
            "--set", f"train.out={clean}", cwd=work)
    got = json.loads((work / "models/vit_demo/freeze_none/fixed/seed1/fold0/metrics.json").read_text())
    want = json.loads((clean / "vit_demo/freeze_none/fixed/seed1/fold0/metrics.json").read_text())
    assert {k: got[k] for k in ("test_acc", "test_loss", "best_val_acc", "best_epoch")} == {
        k: want[k] for k in ("test_acc", "test_loss", "best_val_acc", "best_epoch")}


def test_settings_that_cannot_change_a_feature_byte_retrain_nothing(repro, tmp_path):
    work = _copy(repro, tmp_path / "knobs", **{"runtime.feature_workers": 2, "data.path": "/elsewhere/audio"})
    ran = sh("dvc", "repro", cwd=work).stdout
    assert "Running stage 'features'" not in ran and "Running stage 'train" not in ran
    assert "Running stage 'sweep@" not in ran and "Running stage 'compare'" not in ran


def test_output_paths_flow_from_params_into_the_pipeline(repro, tmp_path):
    work = _copy(repro, tmp_path / "paths", **{"compare.out": "tables"})
    ran = sh("dvc", "repro", cwd=work).stdout
    assert "Running stage 'compare'" in ran and "Running stage 'train" not in ran
    assert (work / "tables/freezing_comparison.csv").is_file()


def test_an_unchanged_sweep_is_restored_from_the_run_cache_locally_and_from_a_remote(repro, tmp_path):
    work = _copy(repro, tmp_path / "cache")
    out = work / "reports/sweep/vit_demo-freeze_none-tuned.json"
    written = out.read_text()
    out.unlink()
    ran = sh("dvc", "repro", cwd=work).stdout
    assert "Running stage 'sweep@" not in ran and out.read_text() == written
    assert "Running stage 'train_tuned@" not in ran  # the restored result is the same bytes

    sh("dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=work)
    sh("dvc", "push", "--run-cache", cwd=work)
    _commit(work, "results")
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(work), str(clone), cwd=tmp_path)
    pulled = sh("dvc", "repro", "--pull", cwd=clone).stdout
    assert "Running stage" not in pulled
    assert (clone / "reports/sweep/vit_demo-freeze_none-tuned.json").read_text() == written


def _exp_run_ids(work: Path, name: str) -> list[str]:
    sh("dvc", "exp", "apply", name, cwd=work)
    return list(pd.read_csv(work / "reports/freezing_runs.csv")["run_id"])


def test_dvc_exp_temp_and_queue_log_into_the_projects_store(repro, tmp_path):
    import time

    work = _copy(repro, tmp_path / "exps")
    _commit(work, "lock")
    one = ["-S", "train.epochs=1", "-S", "grid.seeds=[1]", "-S", "grid.tuned_models=[]",
           "-S", "grid.recipes=[fixed]", "-S", "grid.cells=[]"]  # one fixed-lr cell: the reference
    sh("dvc", "exp", "run", "--temp", "-n", "temp-exp", *one, cwd=work)
    sh("dvc", "exp", "run", "--queue", "-n", "queued-exp", *one, "-S", "train.momentum=0.8", cwd=work)
    sh("dvc", "queue", "start", "-j", "1", cwd=work)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        queue = sh("dvc", "queue", "status", cwd=work).stdout
        if "queued-exp" in queue and not any(s in queue for s in ("Queued", "Running")):
            break
        time.sleep(3)
    assert "Success" in sh("dvc", "queue", "status", cwd=work).stdout
    shown = sh("dvc", "exp", "show", "--csv", cwd=work).stdout
    assert "temp-exp" in shown and "queued-exp" in shown
    client = mlflow.MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
    for name in ("temp-exp", "queued-exp"):
        run_ids = _exp_run_ids(work, name)
        assert len(run_ids) == 1
        for run_id in run_ids:
            run = client.get_run(run_id)
            assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "1"

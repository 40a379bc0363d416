"""`dvc repro` end to end on a tiny offline study, and the compare stage's contract with MLflow."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from conftest import REPO, tfreeze, write_params

BIN = str(Path(sys.executable).parent)


def sh(*cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def repro(tmp_path_factory) -> Path:
    """A git + DVC copy of the repository with tiny params, after one `dvc repro`."""
    root = tmp_path_factory.mktemp("pipeline")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(root)
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A", cwd=root)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny", cwd=root)
    sh("dvc", "repro", cwd=root)
    return root


def test_repro_writes_table_figure_and_per_run_outputs(repro):
    table = pd.read_csv(repro / "reports/freezing_comparison.csv")
    assert list(table["freeze_mode"]) == ["freeze_none", "freeze_patch_0_11"]
    assert list(table["n"]) == [2, 2]
    assert (repro / "reports/freezing_comparison.png").stat().st_size > 10_000
    assert "freeze_patch_0_11" in (repro / "reports/freezing_comparison.md").read_text()
    for freeze in ("freeze_none", "freeze_patch_0_11"):
        for seed in (1, 2):
            run = repro / f"models/vit_demo/{freeze}/seed{seed}"
            assert {"model.pt", "metrics.json", "run.json", "history.csv"} <= {p.name for p in run.iterdir()}
    assert (repro / "reports/sweep/vit_demo-freeze_none.json").is_file()


def test_second_repro_does_nothing_and_status_is_clean(repro):
    again = sh("dvc", "repro", cwd=repro)
    assert "Data and pipelines are up to date" in again.stdout
    assert "up to date" in sh("dvc", "status", cwd=repro).stdout


def test_changing_a_training_param_reruns_training_not_features(repro):
    status = sh("dvc", "status", "--json", cwd=repro)  # baseline clean
    assert status.stdout.strip() in ("{}", "")
    params = repro / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("momentum: 0.9", "momentum: 0.8"))
    try:
        changed = sh("dvc", "status", cwd=repro).stdout
        assert "train@vit_demo-freeze_none-1" in changed and "features:" not in changed
    finally:
        params.write_text(original)


def test_metrics_show_lists_every_run(repro):
    shown = sh("dvc", "metrics", "show", cwd=repro).stdout
    assert "test_acc" in shown and "seed2/metrics.json" in shown


def test_compare_names_the_stage_when_its_mlflow_run_is_gone(repro, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(repro, work, symlinks=True)
    run_id = pd.read_csv(work / "reports/freezing_runs.csv")["run_id"].iloc[0]
    mlflow.set_tracking_uri(f"sqlite:///{work}/mlruns/mlflow.db")
    mlflow.MlflowClient().delete_run(run_id)
    proc = tfreeze("compare", cwd=work, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("re-run: dvc repro -f train@vit_demo-freeze_none-1")
    assert proc.stderr.strip().count("\n") == 0


def test_compare_from_the_original_csv_reproduces_its_numbers(tmp_path):
    write_params(tmp_path)
    csv = REPO / "tests/data/seed_results_summary.csv"
    tfreeze("compare", "--from-csv", str(csv), "--out", str(tmp_path / "out"), cwd=tmp_path)
    table = pd.read_csv(tmp_path / "out/freezing_comparison.csv").set_index("freeze_mode")
    assert table.loc["freeze_none", "test_mean"] == pytest.approx(71.6, abs=0.05)
    assert table.loc["freeze_patch_0_11", "test_mean"] == pytest.approx(63.1, abs=0.05)
    assert table.loc["freeze_patch_0_5", "t_p"] == pytest.approx(0.253, abs=0.002)
    assert (tmp_path / "out/freezing_comparison.png").is_file()


def test_dvc_yaml_lists_every_stage_as_a_tfreeze_subcommand():
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) == {"data", "features", "train", "compare", "sweep"}
    for name, stage in stages.items():
        assert stage["cmd"].startswith(f"tfreeze {name}")


def test_dvc_exp_run_with_a_changed_param_retrains_and_records_the_experiment(repro, tmp_path):
    work = tmp_path / "exp"
    shutil.copytree(repro, work, symlinks=True)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A", cwd=work)
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "lock", cwd=work)
    ran = sh("dvc", "exp", "run", "-n", "one-epoch", "-S", "train.epochs=1", cwd=work).stdout
    assert "Running stage 'train@vit_demo-freeze_none-1'" in ran and "Running stage 'features'" not in ran
    shown = sh("dvc", "exp", "show", "--csv", cwd=work).stdout
    assert "one-epoch" in shown
    metrics = pd.read_csv(work / "reports/freezing_runs.csv")
    assert len(metrics) == 4
    assert (work / "models/vit_demo/freeze_none/seed1/history.csv").read_text().count("\n") == 2


def test_seeds_trained_side_by_side_are_recorded_with_dvc_commit(repro, tmp_path):
    """README's GPU route: `tfreeze train --jobs N` for a mode's seeds, `dvc commit`, `dvc repro` the rest."""
    work = tmp_path / "jobs"
    shutil.copytree(repro, work, symlinks=True)
    write_params(work, **{"train.epochs": 1})
    tfreeze("train", "--model", "vit_demo", "--freeze", "freeze_none", "--jobs", "2", cwd=work)
    cells = ["train@vit_demo-freeze_none-1", "train@vit_demo-freeze_none-2"]
    sh("dvc", "commit", "-f", *cells, cwd=work)
    assert "up to date" in sh("dvc", "status", *cells, cwd=work).stdout
    ran = sh("dvc", "repro", cwd=work).stdout
    assert "Running stage 'train@vit_demo-freeze_patch_0_11-1'" in ran
    assert not any(f"Running stage '{cell}'" in ran for cell in cells)
    assert (work / "models/vit_demo/freeze_none/seed2/history.csv").read_text().count("\n") == 2


def test_compare_shows_fixed_and_tuned_lr_studies_side_by_side(tmp_path):
    write_params(tmp_path)
    fixed = pd.read_csv(REPO / "tests/data/seed_results_summary.csv")
    tuned = fixed.drop(columns="timestamp").assign(lr_source="sweep", test_acc=fixed["test_acc"] + 1.0)
    tuned.to_csv(tmp_path / "tuned_runs.csv", index=False)
    tfreeze("compare", "--from-csv", str(REPO / "tests/data/seed_results_summary.csv"),
            str(tmp_path / "tuned_runs.csv"), "--out", str(tmp_path / "out"), cwd=tmp_path)
    table = pd.read_csv(tmp_path / "out/freezing_comparison.csv")
    by_source = table.set_index(["lr_source", "freeze_mode"])["test_mean"]
    assert set(table["lr_source"]) == {"fixed", "sweep"}
    assert by_source["sweep", "freeze_none"] == pytest.approx(by_source["fixed", "freeze_none"] + 1.0)

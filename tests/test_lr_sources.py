"""Fixed and tuned learning rates side by side: the two train grids, their DVC stages, and a sweep
whose trials average several (seed, fold) runs with seeds no training run uses. Unit-level: the
training is planted, nothing trains; the end-to-end `dvc repro` with both is test_pipeline's."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml

from transfer_freezing import cli, config, grid, recipes
from transfer_freezing.errors import UserError
from transfer_freezing.study import compare
from transfer_freezing.train import core as training
from transfer_freezing.train import stage as train_stage
from transfer_freezing.train import sweep

from conftest import REPO


def _params(**flat) -> dict:
    return config.validate({"grid.models": ["vit_demo"], "grid.tuned_models": ["vit_demo"], **flat})


# --------------------------------------------------------------------------- params


@pytest.mark.parametrize(("flat", "message"), [
    ({"grid.seeds": [1, 2], "sweep.seeds": [2, 3]},
     "sweep.seeds = [2, 3] shares [2] with grid.seeds = [1, 2]; a sweep trial must not replay a "
     "training run"),
    ({"sweep.seeds": [101], "sweep.folds": [0]},
     "sweep.seeds = [101] x sweep.folds = [0] is one run per trial; a trial averages at least two"),
    ({"train.lr": "sweep"}, "train.lr = 'sweep' is retired: tuned-lr cells are their own stage (train_tuned"),
    ({"sweep.seed": 1}, "sweep.seed is now sweep.seeds"),
    ({"grid.freeze_modes": [], "grid.tuned_freeze_modes": []}, "nothing to train"),
    ({"sweep.folds": [0, 1]}, "sweep.folds = [0, 1] has [1]; allowed: [0]"),
    # compare judges every model's modes against the reference: each grid must train it.
    ({"grid.tuned_freeze_modes": ["freeze_patch"]}, "compare.reference_mode = 'freeze_none', but the "
     "tuned-lr grid has no vit_demo/freeze_none cells to judge vit_demo's modes against; add it to "
     "grid.tuned_freeze_modes"),
    ({"grid.freeze_modes": ["freeze_patch"]}, "add it to grid.freeze_modes"),
    ({"grid.cells": ["resnet_demo/freeze_0"]}, "no resnet_demo/freeze_none cells to judge resnet_demo's "
                                                "modes against; add it to grid.cells"),
])
def test_bad_lr_study_params_are_one_line(flat, message):
    with pytest.raises(UserError, match="^params: ") as err:
        _params(**flat)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_either_grid_can_be_turned_off():
    both = _params(**{"grid.tuned_freeze_modes": ["freeze_none"], "grid.seeds": [1], "grid.folds": [0]})
    assert train_stage.grid(both) == [("vit_demo", "freeze_none", 1, 0, "fixed"),
                                      ("vit_demo", "freeze_none", 1, 0, "tuned")]
    tuned_only = _params(**{"grid.freeze_modes": [], "grid.seeds": [1]})
    assert {c[4] for c in train_stage.grid(tuned_only)} == {"tuned"}
    fixed_only = _params(**{"grid.tuned_models": [], "grid.seeds": [1]})
    assert {c[4] for c in train_stage.grid(fixed_only)} == {"fixed"}


@pytest.mark.parametrize(("cells", "message"), [
    (["resnet_demo"], "grid.cells has 'resnet_demo'; each item is '<model>/<freeze mode>'"),
    (["resnet_demo/freeze_0", "resnet_demo/freeze_0"], "grid.cells has 'resnet_demo/freeze_0' twice"),
    (["vit_demo/freeze_none"], "grid.cells has 'vit_demo/freeze_none', which grid.models x "
                               "grid.freeze_modes already holds"),
    (["resnet_demo/freeze_patch_0_5"], "grid.cells has 'resnet_demo/freeze_patch_0_5': unknown freeze "
                                       "mode 'freeze_patch_0_5' for resnet_demo"),
    (["nope/freeze_none"], "grid.cells has 'nope/freeze_none': unknown model"),
])
def test_bad_listed_cells_are_one_line(cells, message):
    with pytest.raises(UserError, match="^params: ") as err:
        _params(**{"grid.cells": cells})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_listed_cells_join_the_fixed_grid_under_their_own_stage(monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    p = _params(**{"grid.freeze_modes": ["freeze_none"], "grid.tuned_freeze_modes": ["freeze_none"],
                   "grid.cells": ["resnet_demo/freeze_none", "resnet_demo/freeze_0"],
                   "grid.seeds": [1], "grid.folds": [0]})
    assert train_stage.grid(p) == [("vit_demo", "freeze_none", 1, 0, "fixed"),
                                   ("resnet_demo", "freeze_none", 1, 0, "fixed"),
                                   ("resnet_demo", "freeze_0", 1, 0, "fixed"),
                                   ("vit_demo", "freeze_none", 1, 0, "tuned")]
    assert list(train_stage.stages(p).values()) == ["train@vit_demo-freeze_none-fixed-1-0",
                                                     "train_cells@resnet_demo/freeze_none-fixed-1-0",
                                                     "train_cells@resnet_demo/freeze_0-fixed-1-0",
                                                     "train_tuned@vit_demo-freeze_none-tuned-1-0"]
    listed = ("resnet_demo", "freeze_0", 1, 0, "fixed")
    assert train_stage.run_dir(Path("models"), *listed) == Path(
        "models/resnet_demo/freeze_0/fixed/seed1/fold0")
    assert compare.CompareConfig.from_params(p).stage(listed) == "train_cells@resnet_demo/freeze_0-fixed-1-0"
    # The CLI: --cell names one pair; --model narrows the product and the list alike.
    one = cli.parser().parse_args(["train", "--cell", "resnet_demo/freeze_0"])
    assert _select(p, one) == [listed]
    assert _select(p, cli.parser().parse_args(["train", "--model", "resnet_demo"])) == [
        ("resnet_demo", "freeze_none", 1, 0, "fixed"), listed]
    assert _select(p, cli.parser().parse_args(["train", "--lr-source", "fixed"]))[-1] == listed
    with pytest.raises(UserError, match="expected <model>/<freeze mode>"):
        _select(p, cli.parser().parse_args(["train", "--cell", "resnet_demo"]))
    with pytest.raises(UserError, match="not both"):
        _select(p, cli.parser().parse_args(["train", "--cell", "a/b", "--model", "a"]))
    only = _params(**{"grid.freeze_modes": [], "grid.tuned_models": [],
                      "grid.cells": ["resnet_demo/freeze_none", "resnet_demo/freeze_0"]})
    assert {c[:2] for c in train_stage.grid(only)} == {("resnet_demo", "freeze_none"),
                                                       ("resnet_demo", "freeze_0")}


def _select(p, args) -> list:
    """The cells a parsed ``tfreeze train`` command line names (what cmd_train runs)."""
    return grid.select(p, args.model, args.freeze, args.cell, args.seed, args.fold, args.lr_source,
                       args.recipe)


def test_every_profile_keeps_sweep_and_training_seeds_apart():
    for path in sorted((REPO / "profiles").glob("*.yaml")):
        p = config.load(path)
        assert not set(p["sweep"]["seeds"]) & set(p["grid"]["seeds"]), path.name


# --------------------------------------------------------------------------- cells: names and folders


def test_each_lr_source_has_its_own_stage_run_name_and_folder(monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    cells = [("vit_demo", "freeze_none", 1, 2, source) for source in ("fixed", "tuned")]
    assert [train_stage.stage_name(*c, tuned=c[4] == "tuned") for c in cells] == [
        "train@vit_demo-freeze_none-fixed-1-2",
                                                            "train_tuned@vit_demo-freeze_none-tuned-1-2"]
    assert [train_stage.cell_name(*c) for c in cells] == ["vit_demo/freeze_none/fixed/seed1/fold2",
                                                           "vit_demo/freeze_none/tuned/seed1/fold2"]
    assert [train_stage.run_dir(Path("models"), *c) for c in cells] == [
        Path("models/vit_demo/freeze_none/fixed/seed1/fold2"),
        Path("models/vit_demo/freeze_none/tuned/seed1/fold2")]


def test_cli_picks_both_grids_or_the_source_asked_for():
    p = _params(**{"grid.freeze_modes": ["freeze_none", "freeze_patch"],
                   "grid.tuned_freeze_modes": ["freeze_none"], "grid.seeds": [1], "grid.folds": [0]})
    args = cli.parser().parse_args(["train"])
    assert [(c[1], c[4]) for c in _select(p, args)] == [
        ("freeze_none", "fixed"), ("freeze_patch", "fixed"), ("freeze_none", "tuned")]
    one = cli.parser().parse_args(["train", "--freeze", "freeze_none"])
    assert [c[4] for c in _select(p, one)] == ["fixed"]
    tuned = cli.parser().parse_args(["train", "--lr-source", "tuned"])
    assert _select(p, tuned) == [("vit_demo", "freeze_none", 1, 0, "tuned")]
    assert compare.CompareConfig.from_params(p).cells == tuple(train_stage.grid(p))


def test_a_tuned_cell_reads_its_sweep_and_refuses_one_that_used_its_seed(tmp_path):
    p = _params(**{"sweep.out": str(tmp_path), "train.lr": 0.05})
    assert train_stage.resolve_lr(p, "vit_demo", "freeze_none", "fixed", 1) == (0.05, {})
    with pytest.raises(UserError, match="needs .*vit_demo-freeze_none-tuned.json, which does not exist; "
                                        "run: dvc repro sweep@vit_demo-freeze_none-tuned"):
        train_stage.resolve_lr(p, "vit_demo", "freeze_none", "tuned", 1)
    result = {"best_lr": 0.003, "study": "vit_demo-freeze_none-abc", "seeds": [101, 102]}
    (tmp_path / "vit_demo-freeze_none-tuned.json").write_text(json.dumps(result))
    assert train_stage.resolve_lr(p, "vit_demo", "freeze_none", "tuned", 1) == (
        0.003, {"lr_study": "vit_demo-freeze_none-abc"})
    with pytest.raises(UserError, match="trained its trials with seed 101; .* must not replay a trial"):
        train_stage.resolve_lr(p, "vit_demo", "freeze_none", "tuned", 101)


# --------------------------------------------------------------------------- dvc.yaml


def test_dvc_yaml_keeps_each_lr_sources_dependencies_exact():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    fixed, tuned = stages["train"], stages["train_tuned"]
    assert fixed["matrix"] == {"model": "${grid.models}", "freeze": "${grid.freeze_modes}",
                               "recipe": "${grid.recipes}", "seed": "${grid.seeds}", "fold": "${grid.folds}"}
    assert tuned["matrix"] == {"model": "${grid.tuned_models}", "freeze": "${grid.tuned_freeze_modes}",
                               "recipe": "${grid.tuned_recipes}", "seed": "${grid.seeds}",
                               "fold": "${grid.folds}"}
    assert "--recipe ${item.recipe}" in fixed["cmd"] and "--recipe ${item.recipe}" in tuned["cmd"]
    # The recipe is a file of the recipes stage (a tuned one's less lr), never a params section: a
    # fixed cell never depends on a sweep; a tuned cell on its own sweep's JSON, not on train.lr.
    recipe = "${train.out}/recipes/${item.recipe}.json"
    assert recipe in fixed["deps"] and recipe in tuned["deps"]
    assert not any("sweep" in d for d in fixed["deps"])
    assert "${sweep.out}/${item.model}-${item.freeze}-${item.recipe}.json" in tuned["deps"]
    assert fixed["params"] == tuned["params"] == ["tracking", "keep"]
    assert [d for d in fixed["deps"] if "sweep" not in d] == [d for d in tuned["deps"] if "sweep" not in d]
    for name in ("train", "train_tuned"):
        outs = [next(iter(o)) if isinstance(o, dict) else o
                for key in ("outs", "metrics", "plots") for o in stages[name][key]]
        folder = "${train.out}/${item.model}/${item.freeze}/${item.recipe}/seed${item.seed}/fold${item.fold}/"
        assert all(o.startswith(folder) for o in outs), name
    assert "grid" in stages["compare"]["params"]  # both grids, their recipes and grid.cells
    # grid.cells: the fixed-lr stage's code and params, one "<model>/<mode>" axis, the same layout.
    listed = stages["train_cells"]
    assert listed["matrix"] == {"cell": "${grid.cells}", "recipe": "${grid.recipes}", "seed": "${grid.seeds}",
                                "fold": "${grid.folds}"}
    assert "--recipe ${item.recipe} --cell ${item.cell}" in listed["cmd"]
    assert listed["deps"] == fixed["deps"] and listed["params"] == fixed["params"]
    def outs(stage: dict) -> list[str]:
        return [next(iter(o)) if isinstance(o, dict) else o
                for key in ("outs", "metrics", "plots") for o in stage[key]]
    assert [o.replace("${item.cell}", "${item.model}/${item.freeze}") for o in outs(listed)] == outs(fixed)
    # A sweep re-runs on its own settings and its recipe's sweep file, not when another mode joins
    # the grid: its own section whole (the grid and the heartbeat live elsewhere).
    swept = stages["sweep"]
    assert swept["params"] == ["sweep", "tracking"]
    assert "${train.out}/recipes/${item.recipe}.sweep.json" in swept["deps"]
    assert swept["matrix"]["recipe"] == "${grid.tuned_recipes}"
    # The recipes stage: the whole recipe sections, written per recipe (recipes.VIEWS).
    assert stages["recipes"]["params"] == ["train", "recipes", "grid.recipes", "grid.tuned_recipes"]
    assert stages["recipes"]["outs"] == ["${train.out}/recipes"]


def test_a_sweep_file_leaves_out_what_a_sweep_sets_itself():
    p = _params()
    swept = recipes.resolved(p, "tuned", "sweep")
    assert set(swept) == {k.removeprefix("train.") for k in config.SCHEMA if k.startswith("train.")} - {
        "lr", "epochs", "diagnostics_clips", "out"}
    assert "lr" not in recipes.resolved(p, "tuned", "train_tuned")
    assert recipes.resolved(p, "fixed", "train")["lr"] == p["train"]["lr"]


# --------------------------------------------------------------------------- the sweep's objective


CURVES = {(101, 0): [10.0, 30.0, 20.0], (102, 0): [40.0, 20.0, 50.0]}  # val acc per epoch


@pytest.fixture
def planted(monkeypatch):
    """``fit`` replaced by planted validation curves; MLflow calls recorded, not made."""
    trained: list[tuple[int, int, int]] = []  # (seed, fold, epochs trained)
    logged: dict[str, dict[int | None, float]] = {}
    curves = dict(CURVES)

    def fit(cfg, data, workdir, on_epoch=None, **kwargs):
        done = 0
        try:
            for epoch, acc in enumerate(curves[(cfg.seed, cfg.fold)]):
                done = epoch + 1
                on_epoch(epoch, {"train_loss": 1.0, "train_acc": 50.0, "val_loss": 1.0, "val_acc": acc})
        finally:
            trained.append((cfg.seed, cfg.fold, done))

    def log_metrics(metrics, step=None):
        for key, value in metrics.items():
            logged.setdefault(key, {})[step] = value

    @contextlib.contextmanager
    def run(*args, **kwargs):
        yield SimpleNamespace(info=SimpleNamespace(run_id="run-1"))

    monkeypatch.setattr(training, "fit", fit)
    monkeypatch.setattr(sweep.tracking, "run", run)
    monkeypatch.setattr(sweep.tracking, "log_params", lambda params: None)
    monkeypatch.setattr(sweep.tracking, "log_metrics", log_metrics)
    monkeypatch.setattr(sweep.mlflow, "set_tag", lambda key, value: None)
    return SimpleNamespace(trained=trained, logged=logged, curves=curves)


def _configs(lr: float = 0.01) -> list[training.RunConfig]:
    p = _params()
    return [train_stage.run_config(p, "vit_demo", "freeze_none", seed, lr, 10, epochs=3, fold=fold)
            for seed, fold in CURVES]


def _objective(trial: optuna.Trial) -> float:
    return sweep._run_trial(trial, _configs(trial.suggest_float("lr", 1e-3, 1e-1, log=True)), {0: None},
                            "parent", "study", "hash")


def test_a_trials_value_is_the_mean_best_val_acc_over_its_runs_and_the_pruner_sees_the_same(planted):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(_objective, n_trials=1)
    (trial,) = study.trials
    # best per run: 30 (seed 101) and 50 (seed 102) -> 40; best-so-far means per epoch: 25, 35, 40
    assert trial.value == pytest.approx(40.0)
    assert trial.intermediate_values == pytest.approx({0: 25.0, 1: 35.0, 2: 40.0})
    assert trial.user_attrs["runs"] == [{"seed": 101, "fold": 0, "best_val_acc": 30.0},
                                        {"seed": 102, "fold": 0, "best_val_acc": 50.0}]
    # The child run logs each run's curve and best under its own key, and the mean as the value.
    assert planted.logged["seed101/fold0/val_acc"] == {0: 10.0, 1: 30.0, 2: 20.0}
    assert planted.logged["seed102/fold0/val_acc"] == {0: 40.0, 1: 20.0, 2: 50.0}
    assert planted.logged["best_val_acc/seed101/fold0"] == {None: 30.0}
    assert planted.logged["best_val_acc/seed102/fold0"] == {None: 50.0}
    assert planted.logged["mean_best_val_acc"] == {0: 25.0, 1: 35.0, 2: 40.0}
    assert planted.logged["best_val_acc"] == {None: 40.0}
    assert planted.trained == [(101, 0, 3), (102, 0, 3)]


def test_the_pruner_acts_only_while_the_last_run_trains(planted):
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    study.optimize(_objective, n_trials=1)
    planted.curves[(101, 0)] = [1.0, 2.0, 3.0]  # far below the first trial at every epoch
    planted.curves[(102, 0)] = [1.0, 2.0, 3.0]
    study.optimize(_objective, n_trials=1)
    second = study.trials[1]
    assert second.state == optuna.trial.TrialState.PRUNED
    assert second.intermediate_values == {0: 1.0}  # the mean over both runs at epoch 0 of the last
    assert planted.trained[2:] == [(101, 0, 3), (102, 0, 1)]  # the first run always finishes


def test_the_study_name_changes_with_the_trials_seeds_and_folds():
    p = _params(**{"split.scheme": "kfold", "split.folds": 3})
    s = sweep.SweepConfig.from_params(p)
    probe = train_stage.run_config(p, "vit_demo", "freeze_none", 101, 0.01, 10, epochs=2)
    name = sweep.study_name(probe, s, "data", "code")
    other_probe = train_stage.run_config(p, "vit_demo", "freeze_none", 102, 0.02, 10, epochs=2, fold=1)
    assert sweep.study_name(other_probe, s, "data", "code") == name  # the runs come from s, not the probe
    seeds = sweep.SweepConfig.from_params(_params(**{"sweep.seeds": [101, 103]}))
    folds = sweep.SweepConfig.from_params(
        _params(**{"split.scheme": "kfold", "split.folds": 3, "sweep.folds": [0, 1]}))
    names = {name, sweep.study_name(probe, seeds, "data", "code"),
             sweep.study_name(probe, folds, "data", "code")}
    assert len(names) == 3 and all(n.startswith("vit_demo-freeze_none-") for n in names)
    assert s.runs == [(101, 0), (102, 0)] and folds.runs == [(101, 0), (101, 1), (102, 0), (102, 1)]

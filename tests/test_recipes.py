"""Named recipes (params' ``recipes``: deltas over ``train``) crossed with the modes: validation,
the grid, the CLI's selection, the recipes stage's files and the interaction table. Unit-level;
the `dvc repro` of a recipe axis is test_pipeline's (its ``repro`` fixture has two fixed-lr recipes)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from transfer_freezing import cli, config, grid, recipes
from transfer_freezing.errors import UserError
from transfer_freezing.study import evaluation, simulation
from transfer_freezing.train import stage as train_stage

ADAMW = {"optimizer": "adamw", "lr": 1e-4, "weight_decay": 0.05, "schedule": "cosine", "warmup_epochs": 2}


def _params(**flat) -> dict:
    return config.validate({"grid.models": ["vit_demo"], "grid.tuned_models": ["vit_demo"],
                            "grid.freeze_modes": ["freeze_none", "freeze_patch"], **flat})


def _two(**flat) -> dict:
    return _params(**{"recipes": {"sgd": {}, "adamw": ADAMW, "tuned": {"lr": "tuned"}},
                      "grid.recipes": ["sgd", "adamw"], **flat})


@pytest.mark.parametrize(("flat", "message"), [
    ({"recipes.adamw": {"optimiser": "adamw"}},
     "recipe 'adamw' sets unknown key 'optimiser'; a recipe sets train keys: weights, "),
    ({"recipes.adamw": {"out": "elsewhere"}}, "recipe 'adamw' sets unknown key 'out'"),
    ({"recipes.adamw": {"optimizer": "adam"}},
     "recipe 'adamw': optimizer = 'adam' is not allowed; expected one of sgd, adamw"),
    ({"recipes.adamw": {"lr": "fast"}},
     "recipe 'adamw': lr = 'fast' is not allowed; expected a number > 0 or 'tuned'"),
    ({"recipes.adamw": [1]}, "recipe 'adamw' = [1]: expected a mapping of train keys"),
    ({"recipes.bad/name": {}}, "recipe 'bad/name': a recipe name is letters, digits"),
    ({"recipes": {"..": {}}}, "recipe '..': a recipe name is letters, digits"),
    ({"grid.recipes": ["nope"]}, "grid.recipes has 'nope', which is not a recipe; recipes: fixed, tuned"),
    ({"grid.recipes": ["tuned"]},
     "grid.recipes has 'tuned', whose lr is 'tuned'; list it in grid.tuned_recipes"),
    ({"grid.tuned_recipes": ["fixed"]},
     "grid.tuned_recipes has 'fixed', whose lr is 0.001; list it in grid.recipes"),
    ({"recipes.adamw": {"warmup_epochs": 20}, "grid.recipes": ["fixed", "adamw"]},
     "recipe 'adamw': warmup_epochs = 20 must be below epochs = 20"),
])
def test_a_bad_recipe_fails_in_one_line_naming_it(flat, message):
    with pytest.raises(UserError) as err:
        _params(**flat)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_recipe_is_train_with_its_delta_and_set_names_one_key():
    p = _two(**{"recipes.adamw.label_smoothing": 0.1})  # --set recipes.NAME.KEY=value adds to it
    adamw = config.recipe(p, "adamw")
    assert adamw == {**p["train"], **ADAMW, "label_smoothing": 0.1}
    assert config.recipe(p, "sgd") == p["train"] and not config.is_tuned(p, "sgd")
    assert config.is_tuned(p, "tuned") and config.grid_recipes(p) == ["sgd", "adamw", "tuned"]
    assert config.recipe_params(p, "adamw")["train"] == adamw and p["train"]["optimizer"] == "sgd"
    # YAML 1.1 reads 1e-4 as a string: a recipe's number is a number, as train's is
    assert config.validate({"recipes.x": {"lr": "1e-4"}})["recipes"]["x"]["lr"] == 1e-4
    with pytest.raises(UserError, match="unknown recipe 'nope'; recipes: sgd, adamw, tuned"):
        config.recipe(p, "nope")


def test_the_grid_crosses_every_recipe_with_its_modes_stages_and_folders(monkeypatch):
    monkeypatch.delenv("DVC_STAGE", raising=False)
    p = _two(**{"grid.cells": ["resnet_demo/freeze_none"], "grid.seeds": [1], "grid.folds": [0]})
    cells = grid.grid(p)
    assert [(c.model, c.freeze, c.recipe) for c in cells] == [
        ("vit_demo", "freeze_none", "sgd"), ("vit_demo", "freeze_patch", "sgd"),
        ("resnet_demo", "freeze_none", "sgd"),
        ("vit_demo", "freeze_none", "adamw"), ("vit_demo", "freeze_patch", "adamw"),
        ("resnet_demo", "freeze_none", "adamw"), ("vit_demo", "freeze_none", "tuned")]
    names = grid.stages(p)
    assert names[cells[3]] == "train@vit_demo-freeze_none-adamw-1-0"
    assert names[cells[5]] == "train_cells@resnet_demo/freeze_none-adamw-1-0"
    assert names[cells[6]] == "train_tuned@vit_demo-freeze_none-tuned-1-0"
    assert grid.cell_name(*cells[3]) == "vit_demo/freeze_none/adamw/seed1/fold0"
    assert train_stage.resolve_lr(p, "vit_demo", "freeze_none", "adamw", 1) == (1e-4, {})
    sweep = train_stage.sweep_json(p, "vit_demo", "freeze_none", "tuned")
    assert sweep.name == "vit_demo-freeze_none-tuned.json"


def _select(p: dict, *argv: str) -> list:
    args = cli.parser().parse_args(["train", *argv])
    return grid.select(p, args.model, args.freeze, args.cell, args.seed, args.fold, args.lr_source,
                       args.recipe)


def test_the_cli_picks_a_recipe_or_an_lr_source():
    p = _two(**{"grid.seeds": [1], "grid.folds": [0]})
    assert {c.recipe for c in _select(p, "--recipe", "adamw")} == {"adamw"}
    assert [c.recipe for c in _select(p, "--freeze", "freeze_patch")] == ["sgd", "adamw"]  # fixed-lr ones
    assert {c.recipe for c in _select(p, "--lr-source", "fixed")} == {"sgd", "adamw"}
    assert [c.recipe for c in _select(p, "--recipe", "tuned")] == ["tuned"]
    with pytest.raises(UserError, match="recipe 'tuned' has a tuned lr, not fixed"):
        _select(p, "--recipe", "tuned", "--lr-source", "fixed")
    with pytest.raises(UserError, match="unknown recipe 'nope'"):
        _select(p, "--recipe", "nope")


def test_the_recipes_stage_writes_each_grid_recipe_as_its_stages_read_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _two()
    written = recipes.write(p)
    assert sorted(path.name for path in written) == ["adamw.json", "sgd.json", "tuned.json",
                                                     "tuned.sweep.json"]
    adamw = json.loads((tmp_path / "models/recipes/adamw.json").read_text())
    assert adamw == {k: v for k, v in config.recipe(p, "adamw").items() if k != "out"}
    assert "lr" not in json.loads((tmp_path / "models/recipes/tuned.json").read_text())
    assert recipes.edited(p) == set()
    assert recipes.edited(_two(**{"recipes.adamw.lr": 2e-4})) == {"adamw"}  # its cells are stale
    assert recipes.edited(_two(**{"train.lr": 0.5})) == {"sgd"}  # adamw and tuned set or sweep their lr


def test_the_interaction_table_pairs_every_recipe_pair_on_its_shared_modes():
    cond = simulation.CONDITIONS[1]
    batch = simulation.simulate_interaction(cond, 2.0, 6.0, 1, np.random.default_rng(3))
    clips = simulation.to_interaction_table(batch, 0).assign(model="vit")
    extra = clips[clips["recipe"] == "A"].assign(recipe="C")  # a third recipe: a copy of A
    table = evaluation.interactions(pd.concat([clips, extra]), "ref", margin=3.0, confidence=0.95)
    pairs = [("B", "A"), ("B", "C"), ("A", "C")]  # in the order the recipes first appear
    assert list(zip(table["recipe_a"], table["recipe_b"], strict=True)) == pairs
    assert table.loc[2, "estimate"] == 0.0 and table.loc[0, "estimate"] == table.loc[1, "estimate"] != 0
    line = evaluation.interaction_lines(table.iloc[[0]])[0]
    assert line.startswith("- vit: (mode − ref) under A minus under B = ")
    one = evaluation.interactions(clips[clips["recipe"] == "A"], "ref", 3.0, 0.95)
    assert one.empty and list(one.columns) == list(evaluation.INTERACTION_COLUMNS)

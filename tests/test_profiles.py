"""Every shipped profile runs: each ``profiles/*.yaml``, shrunk by the same overrides, through
`dvc repro` to its comparison table (issue 22: a profile that cannot reach its table is a bug).

The shrink keeps each profile's shape and cuts its size: the demo model of each architecture, no
pretrained weights, the demo image size, one epoch, one sweep trial, a few two-second clips per
class; each axis cut to the fewest values that keep its shape (3 folds x 2 repeats where it
repeats, 2 seeds where it has several (one where ONE_SEED says why), per model the reference plus
the last-listed mode of each strategy family it uses; in the tuned-lr grid only the first of those,
the reference: the sweep and its tuned cells are what that grid adds, the contrast of modes is the
fixed grid's), every lr source and architecture it has. A GTZAN profile reads the session's tiny
synthetic corpus (GTZAN's layout and names) as its GTZAN copy.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from transfer_freezing import config, grid
from transfer_freezing.model import freezing
from transfer_freezing.model import registry as models

from conftest import BIN, REPO, TINY, dvc_project, sh, tfreeze, write_params

# Not run here, though each validates and renders (test_config): the demo profile is params.yaml
# itself, which the `repro` fixture takes, shrunk (conftest.TINY), through `dvc repro` to its table
# (test_pipeline); a profile `<name>_demo` is `<name>`'s offline version: shrunk, it is `<name>`'s
# study (the same models, modes, cells, recipes and lr sources) on the synthetic corpus instead of
# a GTZAN-shaped copy of it, which `<name>` shrunk runs (e.g. depth_demo: depth's study on a 3-fold
# k-fold cell instead of a stratified split, two designs the other profiles run).
STEMS = {path.stem for path in (REPO / "profiles").glob("*.yaml")}
COVERED = {"demo"} | {stem for stem in STEMS if stem.endswith("_demo") and stem[: -len("_demo")] in STEMS}
# Profiles whose shrunk study another slow test already runs through `dvc repro` (each still
# validates and renders in test_config): shrunk, optimizer is the headline's modes under two
# fixed-lr recipes on a k-fold cell, which test_pipeline's `repro` fixture trains (fixed and adamw,
# with the mode x recipe interaction checked); pretraining's two sources both become the weightless
# vit_demo, which leaves the headline's modes on a k-fold split: the demo's own shape; paper is
# depth's study (its GTZAN copy, stratified split, seeds and ViT modes) without depth's ResNet cells,
# plus a tuned-lr grid (a sweep, then tuned cells) of the `repro` fixture's model and a mode of its.
ELSEWHERE = {"optimizer": "test_pipeline.py::repro", "pretraining": "test_pipeline.py::repro",
             "paper": "depth + test_pipeline.py::repro"}
# What paper shrunk may differ in from depth shrunk (checked by a test below).
PAPER_NOT_DEPTH = {"grid.cells", "grid.tuned_models", "runtime.gpus_per_run", "tracking.experiment"}
PROFILES = sorted(path for path in (REPO / "profiles").glob("*.yaml")
                  if path.stem not in COVERED and path.stem not in ELSEWHERE)
# Each architecture's offline demo model: the registry's model of that family without weights.
DEMO = {spec.family: name for name, spec in models.REGISTRY.items() if not spec.weights}
# The same for every profile: what makes a run small, never what makes the study what it is.
SMALL = {"data.clip_seconds": TINY["data.clip_seconds"],
         "data.synthetic_clips_per_class": TINY["data.synthetic_clips_per_class"],
         "features.image_size": TINY["features.image_size"], "runtime.feature_workers": 1,
         "train.weights": "none", "train.weights_path": None, "train.epochs": 1,
         "train.batch_size": TINY["train.batch_size"], "sweep.n_trials": 1, "sweep.epochs": 1}
# Profiles shrunk to one seed: another profile run here has the same design (data source, split,
# fold cells) with two seeds, so theirs adds its modes (peft: the strategy families) and, with one
# run per mode, compare's one-run path (no interval; the forest figure says so) under `dvc repro`.
ONE_SEED = {"peft": 1}  # checked by a test below
FOLDS, REPEATS = 3, 2  # a fold scheme's fewest folds (split.folds >= 3), and repeats where it repeats


def demo(model: str) -> str:
    return DEMO[models.spec(model).family]


def cut_modes(model: str, modes: list[str], reference: str) -> list[str]:
    """The reference (when listed) plus the last-listed mode of each strategy family of ``modes``."""
    last = {freezing.family_of(model, mode): mode for mode in modes if mode != reference}
    return ([reference] if reference in modes else []) + list(last.values())


def cut_cells(cells: list[int], scheme_cells: int, kept_cells: int, folds: int) -> list[int]:
    """Fold cells: where the profile trains every cell, two folds of every kept repeat (the crossed
    interval's cell and repeat structure, unequal to the split's: compare must not assume every
    cell ran); else the profile's cells still in range."""
    if set(cells) == set(range(scheme_cells)):
        return [c for c in range(kept_cells) if c % folds < 2]
    return [c for c in cells if c < kept_cells] or [0]


def shrink(profile: dict, corpus: Path, seeds: int = 2) -> dict:
    """``profile`` (a params tree) cut to a tiny study of the same shape (see the module docstring),
    with at most ``seeds`` seeds."""
    flat = config.flat(profile)
    out = {**flat, **SMALL}
    reference = flat.get("compare.reference_mode", "freeze_none")
    if flat["data.source"] != "synthetic":
        out["data.path"], out["data.download"] = str(corpus), False
    scheme_cells, kept_cells, folds = 1, 1, 1
    if flat["split.scheme"] == "kfold":
        folds = FOLDS
        repeats = REPEATS if flat["split.repeats"] > 1 else 1
        scheme_cells, kept_cells = flat["split.folds"] * flat["split.repeats"], FOLDS * repeats
        out["split.folds"], out["split.repeats"] = FOLDS, repeats
    for section in ("grid", "sweep"):  # the training runs' and the sweep trials' seeds and folds
        out[f"{section}.folds"] = cut_cells(flat[f"{section}.folds"], scheme_cells, kept_cells, folds)
        # a sweep trial averages two runs at least (config)
        out[f"{section}.seeds"] = flat[f"{section}.seeds"][:seeds if section == "grid" else 2]
    for axis in ("", "tuned_"):  # the fixed-lr and the tuned-lr grid
        chosen, modes = flat[f"grid.{axis}models"], flat[f"grid.{axis}freeze_modes"]
        out[f"grid.{axis}models"] = list(dict.fromkeys(demo(m) for m in chosen))
        kept = cut_modes(chosen[0], modes, reference) if chosen else modes
        # the tuned-lr grid adds the sweep -> tuned-cell path; the contrast of modes is the fixed grid's
        out[f"grid.{axis}freeze_modes"] = kept[:1] if axis and chosen else kept
    by_model: dict[str, list[str]] = {}
    for cell in flat["grid.cells"]:
        model, _, mode = cell.partition("/")
        by_model.setdefault(model, []).append(mode)
    out["grid.cells"] = [f"{demo(model)}/{mode}" for model, modes in by_model.items()
                         for mode in cut_modes(model, modes, reference)]
    # a recipe's epochs and warm-up fit the shrunk run (one epoch: no warm-up); its own lr stays
    out["recipes"] = {name: {k: v for k, v in {**delta, "warmup_epochs": 0}.items()
                             if k not in ("epochs", "batch_size", "weights", "weights_path")}
                      for name, delta in flat["recipes"].items()}
    tree: dict = {}
    for key, value in out.items():
        section, _, leaf = key.partition(".")
        if leaf:
            tree.setdefault(section, {})[leaf] = value
        else:  # a mapping-valued section (recipes)
            tree[section] = value
    return tree


def shrunk(profile: str | Path, seeds: int = 2) -> dict:
    """A shipped profile (its name or file) shrunk, as flat keys (a placeholder GTZAN path)."""
    path = REPO / "profiles" / f"{profile}.yaml" if isinstance(profile, str) else profile
    return config.flat(shrink(config.load(path), Path("corpus"), seeds))


def _repeated_design_through_ray_status_and_mlflow(root: Path, p: dict) -> None:
    """Issue 22 on a profile that repeats k-fold: one mode's fixed-lr cells (every repeat) go through
    the Ray executor (`tfreeze train --jobs 2`, recorded with `dvc commit`) before `dvc repro`
    trains the rest; afterwards status, the runs table, MLflow tags and `tfreeze compare` key each
    run by (lr source, mode, seed, repeat, fold)."""
    env = {"PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    mode, cells = p["grid"]["freeze_modes"][-1], grid.grid(p)
    by_ray = [c for c in cells if c.freeze == mode and c.recipe == "fixed"]
    sh("dvc", "repro", "features", cwd=root)
    ray = tfreeze("train", "--lr-source", "fixed", "--freeze", mode, "--jobs", "2", cwd=root, env=env)
    # and the recipes and pretrain stages, whose outputs are their deps
    assert f"recorded {len(by_ray) + 2} stage(s) in dvc.lock (dvc commit)" in ray.stdout, ray.stdout
    ran = sh("dvc", "repro", cwd=root).stdout
    names = grid.stages(p)
    assert all(f"Running stage '{names[c]}'" not in ran for c in by_ray)
    assert f"Running stage '{names[cells[0]]}'" in ran

    status = tfreeze("status", cwd=root, env=env).stdout
    assert status.splitlines()[-1] == f"{len(cells)} done", status
    runs = pd.read_csv(root / p["compare"]["out"] / "freezing_runs.csv")
    folds = p["split"]["folds"]
    assert set(runs["repeat"]) == set(range(p["split"]["repeats"]))
    assert set(runs["fold"]) == {c % folds for c in p["grid"]["folds"]}
    assert not runs.duplicated(["recipe", "freeze_mode", "seed", "repeat", "fold"]).any()
    assert (runs["cell"] == folds * runs["repeat"] + runs["fold"]).all()
    for name in ("freezing_comparison.png", "freezing_forest.png", "freezing_depth.png"):
        assert (root / p["compare"]["out"] / name).stat().st_size > 10_000

    # A run of the second repeat (cell folds + 1 = repeat 1, fold 1): its stage name and MLflow tags.
    cell = next(c for c in cells if c.recipe == "fixed" and c.fold == folds + 1)
    folder = grid.run_dir(root / p["train"]["out"], *cell)
    run = mlflow.MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db").get_run(
        json.loads((folder / "run.json").read_text())["run_id"])
    assert run.data.tags["dvc_stage"] == names[cell]
    tags = run.data.tags
    assert (tags["cell"], tags["repeat"], tags["fold"]) == (str(folds + 1), "1", "1")
    assert run.info.run_name == grid.cell_name(*cell)
    printed = tfreeze("compare", cwd=root, env=env).stdout
    assert re.search(rf"^\| {cell.model} +\| fixed +\| {mode} ", printed, re.M), printed


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES, ids=[p.stem for p in PROFILES])
def test_every_profile_shrunk_reaches_its_comparison_table(profile, tiny_built, tmp_path):
    root = tmp_path / profile.stem
    root.mkdir()
    small = shrink(config.load(profile), tiny_built / "data/raw", ONE_SEED.get(profile.stem, 2))
    (root / "params.yaml").write_text(yaml.safe_dump(small, sort_keys=False))
    p = config.load(root / "params.yaml")  # the shrunk profile is itself valid params
    dvc_project(root)
    start = time.perf_counter()
    if p["split"]["scheme"] == "kfold" and p["split"]["repeats"] > 1:
        _repeated_design_through_ray_status_and_mlflow(root, p)
    else:
        sh("dvc", "repro", cwd=root)
    seconds = time.perf_counter() - start
    table = pd.read_csv(root / p["compare"]["out"] / "freezing_comparison.csv")
    want = {(c.model, c.recipe, c.freeze) for c in grid.grid(p)}  # every recipe's modes
    assert set(zip(table["model"], table["recipe"], table["freeze_mode"], strict=True)) == want
    runs = pd.read_csv(root / p["compare"]["out"] / "freezing_runs.csv")
    per_pair = len(p["grid"]["seeds"]) * len(p["grid"]["folds"])
    assert len(runs) == len(want) * per_pair
    sweeps = len(config.pairs(p, "tuned")) * len(p["grid"]["tuned_recipes"])
    print(f"\n{profile.name}: dvc repro of {len(runs)} runs and {sweeps} sweeps to the table "
          f"in {seconds:.0f} s")


@pytest.mark.parametrize("name", sorted(set(ELSEWHERE) - {"paper"}))
def test_a_profile_run_elsewhere_shrinks_to_the_shape_that_test_runs(name):
    # The claim behind ELSEWHERE, checked: shrunk, the profile is one weightless demo model on a
    # single-repeat k-fold split, with fixed-lr recipes that the pipeline fixture's recipes match
    # in kind (SGD, and AdamW where the profile has it), and no listed cells.
    from test_pipeline import BOTH

    small = shrunk(name)
    assert (small["split.scheme"], small["split.repeats"], small["grid.models"]) == ("kfold", 1, ["vit_demo"])
    assert small["grid.cells"] == [] and small["grid.freeze_modes"][0] == "freeze_none"
    tuned = small["grid.tuned_recipes"] if small["grid.tuned_models"] else []
    optimizers = {(small["recipes"][r] or {}).get("optimizer", "sgd") for r in small["grid.recipes"] + tuned}
    fixture = {(BOTH["recipes"][r] or {}).get("optimizer", "sgd") for r in BOTH["grid.recipes"]}
    assert optimizers <= fixture and len(small["grid.recipes"]) <= len(BOTH["grid.recipes"])


def test_paper_shrunk_is_depth_plus_the_pipelines_tuned_grid(tmp_path):
    # The claim behind ELSEWHERE["paper"], checked: shrunk, paper equals depth shrunk (run above)
    # but for depth's ResNet cells (paper has none) and paper's tuned-lr grid, which is within the
    # `repro` fixture's tuned grid (the same model, recipe and mode; its sweeps and tuned cells run
    # there); the GPU share per run does not act on CPU runs, and the experiment name only names.
    from test_pipeline import BOTH

    paper, depth = shrunk("paper"), shrunk("depth")
    assert {k for k in paper.keys() | depth.keys() if paper.get(k) != depth.get(k)} == PAPER_NOT_DEPTH
    assert "depth" in {p.stem for p in PROFILES} and paper["grid.cells"] == []
    pipeline = config.flat(config.load(write_params(tmp_path, **BOTH)))
    for key in ("grid.tuned_models", "grid.tuned_freeze_modes", "grid.tuned_recipes"):
        assert paper[key] and set(paper[key]) <= set(pipeline[key]), key


@pytest.mark.parametrize("name", sorted(ONE_SEED))
def test_a_profile_shrunk_to_one_seed_has_the_design_of_one_run_here_with_two(name):
    def design(flat: dict) -> tuple:
        return tuple(flat[k] for k in ("data.source", "split.scheme", "split.folds", "split.repeats",
                                       "grid.folds"))

    one = shrunk(name, ONE_SEED[name])
    assert one["grid.seeds"] == [1] and len(shrunk(name)["grid.seeds"]) == 2  # the profile has several
    twins = [shrunk(p) for p in PROFILES if p.stem not in ONE_SEED and design(shrunk(p)) == design(one)]
    assert twins and all(len(twin["grid.seeds"]) == 2 for twin in twins)

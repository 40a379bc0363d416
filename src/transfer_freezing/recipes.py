"""The ``recipes`` stage: each recipe the grid trains, resolved, as the JSON its stages depend on.

A recipe is ``train`` (the base) with its delta from params' ``recipes`` (``config.recipe``). DVC
cannot list a params section less a key, nor a section chosen by a matrix item, so the train and
sweep stages depend on a file instead: ``<train.out>/recipes/<recipe>.json`` holds the resolved
recipe as a train cell reads it, less what its stage sets by other means (``VIEWS``: a tuned cell's
lr is its sweep JSON; a sweep sets lr and epochs itself and writes no diagnostics), and
``<recipe>.sweep.json`` the same for a tuned recipe's sweeps. An edit that leaves a stage's file
unchanged re-runs nothing after this stage, and a new ``train.*`` setting needs no dvc.yaml edit.
"""

from __future__ import annotations

from pathlib import Path

from . import atomic, config
from .config import Params

# stage kind -> the recipe keys its file leaves out (train.out: where outputs go, in every stage's
# outs already)
VIEWS: dict[str, tuple[str, ...]] = {
    "train": config.RECIPE_LOCATIONS,
    "train_tuned": (*config.RECIPE_LOCATIONS, "lr"),
    "sweep": (*config.RECIPE_LOCATIONS, "lr", "epochs", "diagnostics_clips"),
}
SUFFIX = {"train": ".json", "train_tuned": ".json", "sweep": ".sweep.json"}


def folder(p: Params) -> Path:
    """Where the resolved recipes go: ``<train.out>/recipes`` (the stage's one output)."""
    return Path(p["train"]["out"]) / "recipes"


def views(p: Params, name: str) -> list[str]:
    """The stage kinds that read recipe ``name``: a tuned one's train cells and sweeps, else train."""
    return ["train_tuned", "sweep"] if config.is_tuned(p, name) else ["train"]


def resolved(p: Params, name: str, view: str) -> dict:
    """Recipe ``name`` as the stages of kind ``view`` depend on it (less ``VIEWS[view]``), sorted."""
    return {k: v for k, v in sorted(config.recipe(p, name).items()) if k not in VIEWS[view]}


def path(p: Params, name: str, view: str) -> Path:
    return folder(p) / f"{name}{SUFFIX[view]}"


def edited(p: Params) -> set[str]:
    """The grid's recipes with a file on disk that differs from what ``write`` would write now: their
    cells are stale although DVC sees only the recipes stage changed until it re-runs (a missing
    file DVC reports itself, as a deleted dependency of the cells)."""
    import json

    def current(name: str, view: str) -> bool:
        target = path(p, name, view)
        try:
            return json.loads(target.read_text()) == resolved(p, name, view)
        except FileNotFoundError:
            return True
        except (OSError, ValueError):
            return False

    return {name for name in config.grid_recipes(p) if not all(current(name, v) for v in views(p, name))}


def write(p: Params) -> list[Path]:
    """Write every file of the grid's recipes (``config.grid_recipes``); the paths written."""
    written = []
    for name in config.grid_recipes(p):
        for view in views(p, name):
            atomic.write_json(path(p, name, view), resolved(p, name, view))
            written.append(path(p, name, view))
    return written

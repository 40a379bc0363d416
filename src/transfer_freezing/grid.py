"""The train grid: which cells exist, their DVC stage names and folders (no torch, no MLflow)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from .config import Params, is_tuned, listed_pairs, pairs
from .errors import UserError

LR_SOURCES = ("fixed", "tuned")  # a recipe's lr kind: a number (fixed) or its sweep's best lr (tuned)
# lr kind -> its DVC stage (dvc.yaml's matrices name their cells
# <stage>@<model>-<freeze>-<recipe>-<seed>-<fold>)
STAGES = {"fixed": "train", "tuned": "train_tuned"}
# The fixed-lr cells of grid.cells: dvc.yaml's matrix names them
# <stage>@<model>/<freeze>-<recipe>-<seed>-<fold>.
LISTED_STAGE = "train_cells"
LAST = "last.pt"  # a cell folder's resumable last-epoch state, removed once the run has finished


class Cell(NamedTuple):
    """One training run of the grid. ``fold`` is the fold cell (repeat * split.folds + fold);
    ``recipe`` a name of params' ``recipes`` (its lr decides which grid the cell is in)."""

    model: str
    freeze: str
    seed: int
    fold: int
    recipe: str


def source_of(p: Params, recipe: str) -> str:
    """The lr kind of ``recipe``: ``tuned`` (its sweep's best lr) or ``fixed``."""
    return "tuned" if is_tuned(p, recipe) else "fixed"


def _recipes(p: Params, source: str) -> list[str]:
    return p["grid"]["tuned_recipes" if source == "tuned" else "recipes"]


def grid(p: Params, lr_source: str | None = None) -> list[Cell]:
    """Every train cell of params, fixed-lr recipes first, one recipe after another: what dvc.yaml's
    three train stages hold."""
    t = p["grid"]
    return [Cell(m, f, seed, fold, r) for source in LR_SOURCES if lr_source in (None, source)
            for r in _recipes(p, source) for m, f in pairs(p, source)
            for seed in t["seeds"] for fold in t["folds"]]


def select(p: Params, model: str | None = None, freeze: str | None = None, cell: str | None = None,
           seed: int | None = None, fold: int | None = None, lr_source: str | None = None,
           recipe: str | None = None) -> list[Cell]:
    """The cells one ``tfreeze train`` call names: each axis as given, else the params grid's.

    The recipes: ``recipe``; else those of ``lr_source``'s grid; else, when ``model``, ``freeze`` or
    ``cell`` picks cells, the fixed-lr ones (a tuned cell is asked for by name); else both grids',
    fixed-lr cells first. A fixed-lr grid is grid.models x grid.freeze_modes plus grid.cells;
    ``model`` or ``freeze`` alone narrow it.
    """
    if cell:
        if model or freeze:
            raise UserError("tfreeze train: give --cell <model>/<mode> or --model/--freeze, not both")
        model, sep, freeze = cell.partition("/")
        if not (sep and model and freeze):
            raise UserError(f"tfreeze train --cell {cell!r}: expected <model>/<freeze mode>, "
                            "e.g. --cell resnet50/freeze_0_1")
    if recipe:
        source = source_of(p, recipe)  # unknown recipe -> one line
        if lr_source not in (None, source):
            raise UserError(f"tfreeze train: recipe {recipe!r} has a {source} lr, not {lr_source}")
        lr_source = source
    t = p["grid"]
    axes = {"fixed": (t["models"], t["freeze_modes"]), "tuned": (t["tuned_models"], t["tuned_freeze_modes"])}
    sources = [lr_source] if lr_source else ["fixed"] if model or freeze else list(LR_SOURCES)
    cells = []
    for source in sources:
        extra = listed_pairs(p) if source == "fixed" else []
        chosen = [(m, f) for m in ([model] if model else axes[source][0])
                  for f in ([freeze] if freeze else axes[source][1])]
        chosen += [(m, f) for m, f in extra if m == (model or m) and f == (freeze or f)]
        cells += [Cell(m, f, s, k, r) for r in ([recipe] if recipe else _recipes(p, source))
                  for m, f in dict.fromkeys(chosen)
                  for s in ([seed] if seed is not None else t["seeds"])
                  for k in ([fold] if fold is not None else t["folds"])]
    return cells


def dvc_stage(model: str, freeze: str, seed: int, fold: int, recipe: str, tuned: bool = False,
              listed: bool = False) -> str:
    """The DVC stage of a cell, as dvc.yaml's matrices name it (``tuned``: a tuned-lr recipe's cell;
    ``listed``: a cell of grid.cells)."""
    if listed:
        return f"{LISTED_STAGE}@{model}/{freeze}-{recipe}-{seed}-{fold}"
    return f"{STAGES['tuned' if tuned else 'fixed']}@{model}-{freeze}-{recipe}-{seed}-{fold}"


def stages(p: Params) -> dict[Cell, str]:
    """Every train cell of params and its DVC stage name."""
    extra = set(listed_pairs(p))
    out = {}
    for cell in grid(p):
        tuned = is_tuned(p, cell.recipe)
        out[cell] = dvc_stage(*cell, tuned=tuned, listed=not tuned and cell[:2] in extra)
    return out


def run_dir(models_out: Path, model: str, freeze: str, seed: int, fold: int, recipe: str) -> Path:
    """The cell's folder under train.out (model.pt, metrics.json, run.json, predictions.csv)."""
    return Path(models_out) / model / freeze / recipe / f"seed{seed}" / f"fold{fold}"


def cell_name(model: str, freeze: str, seed: int, fold: int, recipe: str) -> str:
    """The cell's MLflow run name (and its folder under train.out)."""
    return f"{model}/{freeze}/{recipe}/seed{seed}/fold{fold}"

"""The train grid: which cells exist, their DVC stage names and folders (no torch, no MLflow)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from .config import Params, listed_pairs, pairs
from .errors import UserError

LR_SOURCES = ("fixed", "tuned")
# lr source -> its DVC stage (dvc.yaml's matrices name their cells <stage>@<model>-<freeze>-<seed>-<fold>)
STAGES = {"fixed": "train", "tuned": "train_tuned"}
# The fixed-lr cells of grid.cells: dvc.yaml's matrix names them <stage>@<model>/<freeze>-<seed>-<fold>.
LISTED_STAGE = "train_cells"
LAST = "last.pt"  # a cell folder's resumable last-epoch state, removed once the run has finished


class Cell(NamedTuple):
    """One training run of the grid. ``fold`` is the fold cell (repeat * split.folds + fold)."""

    model: str
    freeze: str
    seed: int
    fold: int
    lr_source: str


def grid(p: Params, lr_source: str | None = None) -> list[Cell]:
    """Every train cell of params, fixed-lr ones first: what dvc.yaml's three train stages hold."""
    t = p["grid"]
    return [Cell(m, f, seed, fold, source) for source in LR_SOURCES if lr_source in (None, source)
            for m, f in pairs(p, source) for seed in t["seeds"] for fold in t["folds"]]


def select(p: Params, model: str | None = None, freeze: str | None = None, cell: str | None = None,
           seed: int | None = None, fold: int | None = None, lr_source: str | None = None) -> list[Cell]:
    """The cells one ``tfreeze train`` call names: each axis as given, else the params grid's.

    The lr source: ``lr_source``; else, when ``model``, ``freeze`` or ``cell`` picks cells, fixed (a
    tuned cell is asked for by name); else both grids, fixed-lr cells first. A fixed-lr grid is
    grid.models x grid.freeze_modes plus grid.cells; ``model`` or ``freeze`` alone narrow it.
    """
    if cell:
        if model or freeze:
            raise UserError("tfreeze train: give --cell <model>/<mode> or --model/--freeze, not both")
        model, sep, freeze = cell.partition("/")
        if not (sep and model and freeze):
            raise UserError(f"tfreeze train --cell {cell!r}: expected <model>/<freeze mode>, "
                            "e.g. --cell resnet50/freeze_0_1")
    t = p["grid"]
    axes = {"fixed": (t["models"], t["freeze_modes"]), "tuned": (t["tuned_models"], t["tuned_freeze_modes"])}
    sources = [lr_source] if lr_source else ["fixed"] if model or freeze else list(LR_SOURCES)
    cells = []
    for source in sources:
        extra = listed_pairs(p) if source == "fixed" else []
        chosen = [(m, f) for m in ([model] if model else axes[source][0])
                  for f in ([freeze] if freeze else axes[source][1])]
        chosen += [(m, f) for m, f in extra if m == (model or m) and f == (freeze or f)]
        cells += [Cell(m, f, s, k, source) for m, f in dict.fromkeys(chosen)
                  for s in ([seed] if seed is not None else t["seeds"])
                  for k in ([fold] if fold is not None else t["folds"])]
    return cells


def dvc_stage(model: str, freeze: str, seed: int, fold: int, lr_source: str, listed: bool = False) -> str:
    """The DVC stage of a cell, as dvc.yaml's matrices name it (``listed``: a cell of grid.cells)."""
    if listed:
        return f"{LISTED_STAGE}@{model}/{freeze}-{seed}-{fold}"
    return f"{STAGES[lr_source]}@{model}-{freeze}-{seed}-{fold}"


def stages(p: Params) -> dict[Cell, str]:
    """Every train cell of params and its DVC stage name."""
    extra = set(listed_pairs(p))
    return {cell: dvc_stage(*cell, listed=cell.lr_source == "fixed" and cell[:2] in extra)
            for cell in grid(p)}


def run_dir(models_out: Path, model: str, freeze: str, seed: int, fold: int, lr_source: str) -> Path:
    """The cell's folder under train.out (model.pt, metrics.json, run.json, predictions.csv)."""
    return Path(models_out) / model / freeze / lr_source / f"seed{seed}" / f"fold{fold}"


def cell_name(model: str, freeze: str, seed: int, fold: int, lr_source: str) -> str:
    """The cell's MLflow run name (and its folder under train.out)."""
    return f"{model}/{freeze}/{lr_source}/seed{seed}/fold{fold}"

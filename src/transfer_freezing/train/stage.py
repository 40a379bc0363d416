"""The train stages: one grid cell (model, freeze mode, seed, fold, recipe) = features + training
core + MLflow run.

A recipe (params' ``recipes``: a delta over ``train``) has a fixed lr or ``lr: tuned``; two DVC
stages over one layout: ``train@<model>-<freeze>-<recipe>-<seed>-<fold>`` trains each fixed-lr recipe
of grid.recipes over grid.models x grid.freeze_modes, ``train_tuned@…`` each tuned one of
grid.tuned_recipes at the best lr of its sweep's ``<sweep.out>/<model>-<freeze>-<recipe>.json``
over grid.tuned_models x grid.tuned_freeze_modes, both over grid.seeds x grid.folds, into
``<train.out>/<model>/<freeze>/<recipe>/seed<k>/fold<c>/``. A cell's recipe reaches DVC as the
``recipes`` stage's resolved file (``recipes.py``: a tuned cell's less its lr), so a fixed cell never
depends on a sweep and a tuned cell never on ``train.lr``. An empty list turns a grid off.
``grid.cells`` adds fixed-lr cells outside the product, each ``<model>/<mode>``
(``train_cells@<model>/<freeze>-<recipe>-<seed>-<fold>``, the same layout): one profile can give each
architecture its own modes (ViT's 14 prefix depths, ResNet's 6 stages).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd
import yaml

from .. import atomic, config, provenance
from ..config import Params, listed_pairs
from ..data import features, splits
from ..errors import UserError
from ..grid import (  # noqa: F401 - the grid's names, re-exported for the stage's callers
    LISTED_STAGE,
    LR_SOURCES,
    STAGES,
    Cell,
    cell_name,
    dvc_stage,
    grid,
    run_dir,
    source_of,
    stages,
)
from ..model import freezing, layer_decay
from ..model import registry as models
from . import checkpoint, diagnostics, scores, tracking
from . import core as training
from . import run_reports as reports

# The params a run logs (tests/test_training.py compares): its resolved recipe (the ``train``
# section of ``config.recipe_params``: what decides a run's numbers; a tuned cell's less train.lr, its
# lr being its sweep JSON) and ``tracking``, less LOCATIONS, plus its resolved ``run.*`` settings,
# its recipe's name and lr source. In dvc.yaml the recipe is the ``recipes`` stage's resolved file
# (``recipes.VIEWS``), which holds the same keys. Other sections cannot change its numbers (grid:
# which cells exist; runtime: how it runs; a run logs its resolved device and compile flag as run.*
# params), so changing them re-runs nothing and never conflicts with a resumed run's params.
STAGE_PARAMS = ("train", "tracking")
TUNED_STAGE_PARAMS = (*(k for k in config.SCHEMA if k.startswith("train.") and k != "train.lr"), "tracking")
LOCATIONS = ("train.out",)  # where outputs go, not what they hold: listed (within train), not logged
# Listed after those in dvc.yaml, as it decides what model.pt holds (not the run's numbers): a run
# records it as a tag, which a resume may change, not as a param. (first_seed reads grid.seeds,
# which is not listed: adding a seed must not re-run every cell.)
STORAGE_PARAMS = ("keep",)


@dataclass(frozen=True)
class Workspace:
    """What a train (or sweep) stage reads and writes, resolved once from params."""

    features: features.Store
    models_out: Path
    sweep_out: Path
    tracking: tracking.Tracking

    @classmethod
    def from_params(cls, p: Params) -> Workspace:
        return cls(features.Store.from_params(p), Path(p["train"]["out"]), Path(p["sweep"]["out"]),
                   tracking.Tracking.from_params(p))

    def run_dir(self, model: str, freeze: str, seed: int, fold: int, recipe: str) -> Path:
        return run_dir(self.models_out, model, freeze, seed, fold, recipe)

    @property
    def cache_dir(self) -> Path:
        """Where frozen-prefix activations are shared between runs: beside the features, not a DVC out."""
        return self.features.root.parent / "cache" / "activations"

    def load_data(self, batch_size: int, fold: int = 0) -> tuple[training.Data, dict]:
        meta = self.features.read_meta()
        data = training.Data(**self.features.load_cell(fold))
        if batch_size > len(data.train):
            raise UserError(f"train.batch_size = {batch_size} is larger than the train split "
                            f"({len(data.train)} clips); lower it")
        return data, meta





def stage_name(model: str, freeze: str, seed: int, fold: int, recipe: str, tuned: bool = False,
               listed: bool = False) -> str:
    """The DVC stage this process runs (``DVC_STAGE`` inside ``dvc repro``), else the cell's."""
    return os.environ.get("DVC_STAGE") or dvc_stage(model, freeze, seed, fold, recipe, tuned, listed)


def sweep_json(p: Params, model: str, freeze: str, recipe: str = config.TUNED) -> Path:
    """The sweep stage's result for (model, freeze, recipe): a train_tuned cell's lr."""
    return Path(p["sweep"]["out"]) / f"{model}-{freeze}-{recipe}.json"


def resolve_lr(p: Params, model: str, freeze: str, recipe: str, seed: int) -> tuple[float, dict]:
    """(learning rate, provenance tags): the recipe's lr, or (``lr: tuned``) the best lr of the
    cell's sweep JSON.

    A tuned cell refuses a sweep whose trials trained with its own seed: it would replay a trial.
    """
    if not config.is_tuned(p, recipe):  # unknown recipe -> one line
        return float(config.recipe(p, recipe)["lr"]), {}
    path = sweep_json(p, model, freeze, recipe)
    if not path.is_file():
        raise UserError(f"tuned-lr cell {model}/{freeze}/{recipe} needs {path}, which does not exist; "
                        f"run: dvc repro sweep@{model}-{freeze}-{recipe}")
    result = json.loads(path.read_text())
    seeds = result.get("seeds")
    if seeds is None or seed in seeds:
        why = ("lacks its trial seeds (an older sweep)" if seeds is None
               else f"trained its trials with seed {seed}")
        raise UserError(f"{path} {why}; a tuned cell with seed {seed} must not replay a trial: "
                        f"re-run the sweep (dvc repro -f sweep@{model}-{freeze}-{recipe})")
    return float(result["best_lr"]), {"lr_study": str(result.get("study", ""))}


def run_config(p: Params, model: str, freeze: str, seed: int, lr: float, num_classes: int,
               epochs: int | None = None, fold: int = 0) -> training.RunConfig:
    """One run's config: every recipe key (``train.*``) that names a ``RunConfig`` field, by that
    name (a new recipe setting needs no line here), then the cell, the lr and what runtime resolves."""
    recipe = {f.name: p["train"][f.name] for f in fields(training.RunConfig) if f.name in p["train"]}
    return training.RunConfig(**{
        **recipe, "model": model, "freeze": freeze, "seed": seed, "fold": fold, "lr": lr,
        "epochs": epochs or p["train"]["epochs"], "num_classes": num_classes,
        "image_size": p["features"]["image_size"], "device": p["runtime"]["device"],
        "compile": p["runtime"]["compile"]})


def stage_params(p: Params, lr_source: str = "fixed") -> dict[str, object]:
    """The stage's params keys of ``p``, flattened (a section name stands for all its keys)."""
    keys = STAGE_PARAMS if lr_source == "fixed" else TUNED_STAGE_PARAMS
    flat = config.flat(p)
    return {k: v for k, v in flat.items()
            if any(k == key or k.startswith(key + ".") for key in keys) and k not in LOCATIONS}


def train(p: Params, model: str, freeze: str, seed: int, fold: int = 0, recipe: str = "fixed") -> dict:
    """The train stages' entry point: resolve params once (the cell's recipe over ``train``), then
    run the cell."""
    freezing.plan(model, freeze)  # unknown mode -> one line, before any work
    lr, provenance = resolve_lr(p, model, freeze, recipe, seed)
    source = source_of(p, recipe)
    rp = config.recipe_params(p, recipe)
    ws = Workspace.from_params(rp)
    meta = ws.features.read_meta()
    cfg = run_config(rp, model, freeze, seed, lr, len(meta["classes"]), fold=fold)
    logged = {**stage_params(rp, source), **{f"run.{k}": v for k, v in asdict(cfg).items()},
              "run.recipe": recipe, "run.lr_source": source}
    is_listed = source == "fixed" and (model, freeze) in listed_pairs(p)
    policy = p["keep"]["weights"]
    return train_cell(ws, cfg, recipe, logged, full_params=config.flat(rp),
                      checkpoint_seconds=p["runtime"]["checkpoint_seconds"],
                      diagnostics_clips=rp["train"]["diagnostics_clips"],
                      extra_tags=provenance,
                      listed=is_listed, tuned=source == "tuned",
                      drop_weights=None if checkpoint.keeps_weights(policy, seed, p["grid"]["seeds"])
                      else policy)


def train_cell(ws: Workspace, cfg: training.RunConfig, recipe: str, logged: dict,
               full_params: dict | None = None, checkpoint_seconds: float = 60.0,
               diagnostics_clips: int = 0, extra_tags: dict[str, str] | None = None,
               listed: bool = False, drop_weights: str | None = None, tuned: bool = False) -> dict:
    """Run one cell, log it to MLflow, write model.pt, metrics.json, diagnostics.json and run.json.

    ``diagnostics.json`` (``diagnostics``): the weight change of every part, and with
    ``diagnostics_clips`` >= 4 the CKA of every block on that many test clips. ``drop_weights``
    (the ``keep.weights`` policy that drops this run's weights, None to keep them): once the
    diagnostics have read ``model.pt``, it becomes a record without the weights (``checkpoint``).

    A cell killed by SIGKILL resumes here from its ``last.pt`` into the same MLflow run; Ctrl-C
    or SIGTERM mark the run KILLED and keep the checkpoint; a run that can no longer be resumed
    (its settings changed) is marked KILLED with the reason.
    """
    data, meta = ws.load_data(cfg.batch_size, cfg.fold)
    if cfg.weights != "none":  # missing offline -> one line, before any output
        models.weights_file(cfg.model, cfg.weights_path, cfg.weights)
    exp_id = tracking.connect(ws.tracking)
    out = ws.run_dir(cfg.model, cfg.freeze, cfg.seed, cfg.fold, recipe)
    out.mkdir(parents=True, exist_ok=True)
    stage = stage_name(cfg.model, cfg.freeze, cfg.seed, cfg.fold, recipe, tuned, listed)
    resumed_id = _resumable_run(out, cfg, exp_id, stage)
    feature_hash = ws.features.content_hash()
    repeat, fold = splits.repeat_fold(cfg.fold, meta.get("folds"))  # cfg.fold is the cell
    tags = {"model": cfg.model, "freeze_mode": cfg.freeze, "seed": str(cfg.seed), "cell": str(cfg.fold),
            "repeat": str(repeat), "fold": str(fold),
            "recipe": recipe, "lr_source": "tuned" if tuned else "fixed",
            "weights_kept": str(drop_weights is None).lower(), **(extra_tags or {}),
            "dvc_stage": stage, "feature_hash": feature_hash,
            "features_params_hash": meta["params_hash"], **tracking.git_tags()}
    name = cell_name(cfg.model, cfg.freeze, cfg.seed, cfg.fold, recipe)
    gpu = training.pick_device(cfg.device).type == "cuda"
    with training.sigterm_as_interrupt(), \
            tracking.run(name, run_id=resumed_id, tags=tags, system_metrics=gpu) as active:
        run_id = active.info.run_id
        tracking.log_params(logged)
        if not resumed_id:
            tracking.log_features_input(ws.features.root, feature_hash, meta)
            if full_params is not None:
                tracking.log_text(yaml.safe_dump(full_params, sort_keys=True), "params/all_params.yaml")
            tracking.log_text(json.dumps(lr_groups(cfg), indent=1), LR_GROUPS)
        logged_steps = tracking.logged_steps(run_id, tracking.metric_name("val_acc")) if resumed_id else set()

        def on_epoch(epoch: int, row: dict) -> None:
            if epoch not in logged_steps:  # a resume re-runs epochs after its last checkpoint
                tracking.log_sectioned(row, step=epoch)

        result = training.fit(cfg, data, out, on_epoch=on_epoch, resume_extra={"mlflow_run_id": run_id},
                              cache_dir=ws.cache_dir, checkpoint_seconds=checkpoint_seconds)
        metrics = summary_metrics(result, cfg.freeze, cfg.model)
        tracking.log_sectioned(metrics)
        reports.log_confusion(result.confusion, meta["classes"], out)
        table = predictions_table(result, meta["classes"])
        atomic.write_text(out / PREDICTIONS, table.to_csv(index=False))
        tracking.log_artifact(out / PREDICTIONS, "evaluation")
        diag = diagnostics.from_checkpoint(out / "model.pt", data.test, diagnostics_clips,
                                           training.pick_device(cfg.device), cfg.batch_size)
        diagnostics.write(diag, out / diagnostics.FILE)
        reports.log_diagnostics(diag, diagnostics.metrics(diag), out / diagnostics.FILE)
        # model.pt is a DVC output and the run's logged model (one inode on a local store, see
        # tracking.log_checkpoint); a run that drops its weights logs the record that replaces them.
        weights_sha = provenance.file_sha256(out / "model.pt")
        tracking.set_tags({"checkpoint_path": (out / "model.pt").as_posix(),
                           "checkpoint_sha256": weights_sha,
                           "checkpoint_bytes": str((out / "model.pt").stat().st_size)})
        if drop_weights is None:
            tracking.log_checkpoint(out / "model.pt", weights_sha, data.test.images, len(meta["classes"]),
                                    {"dvc_stage": stage})
        else:
            checkpoint.drop_weights(out / "model.pt", weights_sha, drop_weights)
            tracking.log_record(out / "model.pt")
    history = pd.DataFrame(result.history).assign(epoch=range(1, len(result.history) + 1))
    atomic.write_text(out / "history.csv", history.to_csv(index=False))
    atomic.write_json(out / "metrics.json", metrics)
    atomic.write_json(out / "run.json", {"run_id": run_id, "experiment_id": exp_id,
                                         "tracking_uri": tracking.mask(ws.tracking.uri),
                                         "lr": cfg.lr, "recipe": recipe,
                                         "lr_source": "tuned" if tuned else "fixed"})
    checkpoint.finish(out)
    print(f"{name}: test acc {result.test_acc:.1f} % "
          f"(best val {result.best_val_acc:.1f} % at epoch {result.best_epoch + 1}), "
          f"trainable {result.trainable_params:,} ({100 * result.trainable_share:.2f} %), "
          f"MLflow run {run_id}")
    return metrics


def _resumable_run(out: Path, cfg: training.RunConfig, exp_id: str, stage: str) -> str | None:
    """The MLflow run to continue, if this cell's checkpoint can resume; close the ones that cannot.

    A run left RUNNING by a killed process is either continued (its checkpoint matches ``cfg``)
    or marked KILLED with the reason, so no run stays RUNNING forever.
    """
    run_id = checkpoint.peek(out, cfg).get("mlflow_run_id")
    if run_id and not tracking.run_exists(run_id, exp_id):
        print(f"MLflow run {run_id} of the checkpoint in {out} is not in this store; starting a new run")
        run_id = None
    stale = checkpoint.stale(out, cfg)
    reason = (f"not resumable: {stale[1]}" if stale
              else "the process stopped without ending the run (killed); it could not be resumed")
    tracking.close_orphans(exp_id, {"dvc_stage": stage}, reason, keep=run_id)
    return run_id


PREDICTIONS = "predictions.csv"
LR_GROUPS = "params/lr_groups.json"  # the run's optimiser groups and their lr (layer_decay), once per run


def lr_groups(cfg: training.RunConfig) -> list[dict]:
    """The optimiser's parameter groups of ``cfg``'s mode: name, lr multiplier, lr, trainable count,
    module prefixes (``layer_decay.describe``; one group when layer decay is off). Under LP-FT the
    head-only phase trains the ``head`` group alone, at its lr."""
    rows = layer_decay.describe(cfg.model, cfg.layer_decay, cfg.lr, cfg.freeze, cfg.num_classes)
    return [{**r, "prefixes": list(r["prefixes"])} for r in rows]


def predictions_table(result: training.Result, classes: list[str]) -> pd.DataFrame:
    """One row per (split, clip): label, predicted class, correct, and every class probability."""
    parts = []
    for split, pred in result.predictions.items():
        frame = pd.DataFrame({"split": split, "clip_id": pred.clip_ids,
                              "label": [classes[i] for i in pred.labels.tolist()],
                              "pred": [classes[i] for i in pred.preds.tolist()]})
        frame["correct"] = (frame["label"] == frame["pred"]).astype(int)
        probs = pd.DataFrame(pred.probs.numpy().round(6), columns=[f"p_{c}" for c in classes])
        parts.append(pd.concat([frame, probs], axis=1))
    return pd.concat(parts, ignore_index=True)


def summary_metrics(result: training.Result, freeze: str, model: str) -> dict:
    """metrics.json (flat names; MLflow logs them under ``tracking.metric_name``): test accuracy and
    loss, the scores beyond accuracy of the test clips (``scores.SCORES`` as ``test_<score>``), best
    validation epoch, trainable share, frozen blocks and the run's cost."""
    test = result.predictions["test"]
    beyond = scores.scores(test.labels, test.probs, test.probs.shape[1])
    return {
        "test_acc": result.test_acc, "test_loss": result.test_loss,
        **{f"test_{name}": value for name, value in beyond.items()},
        "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch + 1,
        "trainable_params": result.trainable_params, "total_params": result.total_params,
        "trainable_share": result.trainable_share,
        "frozen_blocks": freezing.plan(model, freeze).frozen_blocks,
        "wall_seconds": round(result.wall_seconds, 3),
        "checkpoint_bytes": result.checkpoint_bytes,
        "checkpoint_io_share": round(result.checkpoint_seconds / max(result.wall_seconds, 1e-9), 4),
    }

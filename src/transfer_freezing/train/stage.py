"""The train stage: one grid cell (model, freeze mode, seed) = features + training core + MLflow run."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from .. import atomic, config
from ..config import Params
from ..data import features
from ..errors import UserError
from ..model import freezing
from ..model import registry as models
from . import core as training
from . import run_reports as reports
from . import tracking


def run_dir(p: Params, model: str, freeze: str, seed: int) -> Path:
    return Path(p["train"]["out"]) / model / freeze / f"seed{seed}"


def stage_name(model: str, freeze: str, seed: int) -> str:
    """The DVC stage this cell is (dvc.yaml's matrix names it this way)."""
    return os.environ.get("DVC_STAGE") or f"train@{model}-{freeze}-{seed}"


def resolve_lr(p: Params, model: str, freeze: str) -> tuple[float, str]:
    """(learning rate, 'fixed' | 'sweep'): ``train.lr: sweep`` reads the sweep stage's best lr."""
    if p["train"]["lr"] != "sweep":
        return float(p["train"]["lr"]), "fixed"
    path = Path(p["sweep"]["out"]) / f"{model}-{freeze}.json"
    if not path.is_file():
        raise UserError(f"train.lr = sweep but {path} does not exist; run: dvc repro sweep")
    return float(json.loads(path.read_text())["best_lr"]), "sweep"


def run_config(p: Params, model: str, freeze: str, seed: int, lr: float, num_classes: int,
               epochs: int | None = None) -> training.RunConfig:
    t = p["train"]
    return training.RunConfig(
        model=model, freeze=freeze, seed=seed, epochs=epochs or t["epochs"],
        batch_size=t["batch_size"], lr=lr, momentum=t["momentum"],
        weight_decay=t["weight_decay"], frozen_bn=t["frozen_bn"], weights=t["weights"],
        weights_path=t["weights_path"], image_size=p["features"]["image_size"],
        num_classes=num_classes, device=t["device"], activation_cache=t["activation_cache"],
        compile=t["compile"],
    )


def cache_dir(p: Params) -> Path:
    """Where frozen-prefix activations are shared between runs: next to the features, not a DVC out."""
    return Path(p["features"]["out"]).parent / "cache" / "activations"


def load_data(p: Params, batch_size: int) -> tuple[training.Data, dict]:
    meta = features.read_meta(p)
    data = training.Data(*(features.load(p, name) for name in ("train", "val", "test")))
    if batch_size > len(data.train):
        raise UserError(f"train.batch_size = {batch_size} is larger than the train split "
                        f"({len(data.train)} clips); lower it")
    return data, meta


def feature_hash(p: Params) -> str:
    digest = hashlib.sha256()
    root = Path(p["features"]["out"])
    for name in ("meta.json", "train.npy", "val.npy", "test.npy"):
        with open(root / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def train(p: Params, model: str, freeze: str, seed: int) -> dict:
    """Run one cell, log it to MLflow, write model.pt, metrics.json and run.json atomically."""
    freezing.plan(model, freeze)  # unknown mode -> one line, before any work
    lr, lr_source = resolve_lr(p, model, freeze)
    data, meta = load_data(p, p["train"]["batch_size"])
    cfg = run_config(p, model, freeze, seed, lr, len(meta["classes"]))
    if cfg.weights == "imagenet":
        models.weights_file(model, cfg.weights_path)  # missing offline -> one line, before any output
    exp_id = tracking.connect(p)
    out = run_dir(p, model, freeze, seed)
    out.mkdir(parents=True, exist_ok=True)
    resumed_id = training.peek(out, cfg).get("mlflow_run_id")
    tags = {"model": model, "freeze_mode": freeze, "seed": str(seed), "lr_source": lr_source,
            "dvc_stage": stage_name(model, freeze, seed), "feature_hash": feature_hash(p),
            "features_params_hash": meta["params_hash"], **tracking.git_tags()}
    with tracking.run(f"{model}/{freeze}/seed{seed}", run_id=resumed_id, tags=tags) as active:
        run_id = active.info.run_id
        tracking.log_params({**config.flat(p), **{f"run.{k}": v for k, v in asdict(cfg).items()},
                             "run.lr_source": lr_source})
        result = training.fit(
            cfg, data, out, on_epoch=lambda epoch, row: tracking.log_metrics(row, step=epoch),
            resume_extra={"mlflow_run_id": run_id}, cache_dir=cache_dir(p),
        )
        metrics = summary_metrics(result, freeze, model)
        tracking.log_metrics(metrics)
        reports.log_confusion(result.confusion, meta["classes"], out)
        tracking.log_artifact(out / "model.pt", "checkpoint")
    history = pd.DataFrame(result.history).assign(epoch=range(1, len(result.history) + 1))
    atomic.write_text(out / "history.csv", history.to_csv(index=False))
    atomic.write_json(out / "metrics.json", metrics)
    atomic.write_json(out / "run.json", {"run_id": run_id, "experiment_id": exp_id,
                                         "tracking_uri": tracking.mask(tracking.tracking_uri(p)),
                                         "lr": lr, "lr_source": lr_source})
    training.finish(out)
    print(f"{model}/{freeze}/seed{seed}: test acc {result.test_acc:.1f} % "
          f"(best val {result.best_val_acc:.1f} % at epoch {result.best_epoch + 1}), "
          f"trainable {result.trainable_params:,} ({100 * result.trainable_share:.2f} %), "
          f"MLflow run {run_id}")
    return metrics


def summary_metrics(result: training.Result, freeze: str, model: str) -> dict:
    return {
        "test_acc": result.test_acc, "test_loss": result.test_loss,
        "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch + 1,
        "trainable_params": result.trainable_params, "total_params": result.total_params,
        "trainable_share": result.trainable_share,
        "frozen_blocks": freezing.plan(model, freeze).frozen_blocks,
        "wall_seconds": round(result.wall_seconds, 3),
    }

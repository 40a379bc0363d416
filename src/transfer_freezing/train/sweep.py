"""Optuna learning-rate sweep per (model, freeze mode, tuned-lr recipe), every trial an MLflow child run.

A trial trains with the recipe (``config.recipe``: ``train`` with its delta) at the trial's lr, for
``sweep.epochs``.

A trial's value is the mean, over its runs, of the best validation accuracy (never test): one run
per (seed, fold) of ``sweep.seeds`` x ``sweep.folds``, at least two, so the chosen rate is not one
run's luck. The seeds are disjoint from ``grid.seeds`` (config checks it), so no tuned-lr training
run replays a trial. Each run is seeded as a training run is (``core.run_seed(seed, fold cell)``), so
every trial of a study, and every mode's study, trains the same (seed, cell) runs from the same
initialisation and batch order: trials differ in their lr only. With ``split.scheme: kfold``,
``sweep.folds`` names fold cells: a trial then also trains on several cells and averages their
validation folds (cell c validates on fold c+1).
Caveat: with k-fold every validation fold is another cell's test fold, so the chosen lr has seen
those clips' validation labels; more folds dilute this, only a per-cell (nested) sweep removes it.

Runs train one after another. The pruner sees the objective's own quantity: at epoch e the trial
reports the mean over its runs of each run's best validation accuracy up to epoch e, which at the
last epoch is the objective. That mean exists only once every run has reached epoch e, so it is
reported (and the pruner can act) only while the trial's last run trains; the earlier runs always
finish.

One study per (model, freeze mode, data, code, objective settings), stored at a URL (sqlite file by
default, PostgreSQL for several machines). ``sweep.n_trials`` is the study's total across reruns:
a killed sweep resumes and runs only what is missing. A plain ``tfreeze sweep`` (the DVC stage) is
alone on its study, so it is a plain ``study.optimize``: a trial it finds RUNNING was left by a
killed predecessor and is failed and re-queued with the same lr at once. Several processes on one
study (``--workers N`` as Ray tasks, or ``--shared`` on other machines) go through
``sweep_workers``, which keeps the total exact while they share it.

MLflow: one parent run per study (tags ``optuna_study`` and ``sweep_role=parent``), whose id is
kept as the study's user attr ``mlflow_parent_run_id``. Each trial is a child run (tag
``mlflow.parentRunId``) with its params, per-epoch metrics and a ``state`` tag (complete / pruned /
failed). When the study has all its trials, the parent gets ``best_lr`` / ``best_val_acc`` and the
two figures (``sweep_figures``), and ``reports/sweep/<model>-<freeze>-<recipe>.json`` is written (the same
bytes whichever worker writes it).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import mlflow
import numpy as np
import optuna
from optuna.trial import TrialState

from .. import atomic
from ..config import Params, recipe_params, resolve_url
from ..errors import UserError
from ..model import freezing
from ..provenance import code_hash, json_hash
from . import core as training
from . import stage as train_stage
from . import tracking
from .sweep_figures import plot_sweep
from .sweep_storage import (
    FINALISED_TAG,
    FINISHED,
    PARENT_ATTR,
    RUN_ATTR,
    TrialSeededTPE,
    finalised_with,
    finished,
    open_storage,
    retry_left_trial,
)


@dataclass(frozen=True)
class SweepConfig:
    """The ``sweep`` section plus the training settings a trial shares with the train stage."""

    n_trials: int
    lr_low: float
    lr_high: float
    epochs: int
    seeds: tuple[int, ...]
    folds: tuple[int, ...]
    sampler_seed: int
    pruner_warmup_epochs: int
    pruner_startup_trials: int
    storage: str
    heartbeat_seconds: int
    out: Path
    recipe: str = "tuned"  # the tuned-lr recipe swept (its name is in the result's file name)

    @classmethod
    def from_params(cls, p: Params, recipe: str = "tuned") -> SweepConfig:
        s = p["sweep"]
        storage = resolve_url(os.environ.get("OPTUNA_STORAGE") or s["storage"])
        return cls(s["n_trials"], s["lr_low"], s["lr_high"], s["epochs"], tuple(s["seeds"]),
                   tuple(s["folds"]), s["sampler_seed"], s["pruner_warmup_epochs"],
                   s["pruner_startup_trials"], storage, p["runtime"]["sweep_heartbeat_seconds"],
                   Path(s["out"]), recipe)

    @property
    def runs(self) -> list[tuple[int, int]]:
        """A trial's (seed, fold) runs, in the order they train."""
        return [(seed, fold) for seed in self.seeds for fold in self.folds]

    def output_path(self, model: str, freeze: str) -> Path:
        return self.out / f"{model}-{freeze}-{self.recipe}.json"


# --------------------------------------------------------------------------- public entry point

def run_study(p: Params, model: str, freeze: str, recipe: str = "tuned",
              workers: ModuleType | None = None) -> dict:
    """The sweep stage's entry point: resolve params once (the recipe over ``train``), then run the
    (model, freeze, recipe) study.

    ``workers``: the ``sweep_workers`` module when other processes work on the same study at once
    (``tfreeze sweep --shared`` / ``--workers N``); the CLI passes it, so a lone sweep (the DVC
    stage) never imports it.
    """
    s = SweepConfig.from_params(p, recipe)
    _check_space(s)
    freezing.plan(model, freeze)  # unknown mode -> one line, before any work
    p = recipe_params(p, recipe)  # unknown recipe -> one line
    ws = train_stage.Workspace.from_params(p)
    meta = ws.features.read_meta()

    def trial_config(lr: float, seed: int, fold: int) -> training.RunConfig:
        return train_stage.run_config(p, model, freeze, seed, lr, len(meta["classes"]), epochs=s.epochs,
                                      fold=fold)

    with training.sigterm_as_interrupt():
        return sweep(s, ws, model, freeze, trial_config, workers)


def sweep(s: SweepConfig, ws: train_stage.Workspace, model: str, freeze: str,
          trial_config: Callable[[float, int, int], training.RunConfig],
          workers: ModuleType | None = None) -> dict:
    """Run what is missing of the (model, freeze) study; return the summary written to JSON.

    Order: validate (search space, features, storage, tracking) before any training; then run (or,
    with other ``workers``, wait for) the missing trials; then write the JSON and complete the parent run.
    """
    probe = trial_config(s.lr_low, *s.runs[0])
    data: dict[int, training.Data] = {}
    for fold in s.folds:  # checks features and batch size of every fold a trial trains on
        data[fold], meta = ws.load_data(probe.batch_size, fold)
    name = study_name(probe, s, ws.features.content_hash(), code_hash())
    storage = open_storage(s.storage, s.heartbeat_seconds, workers.StaleTrial() if workers else None)
    exp_id = tracking.connect(ws.tracking)
    optuna.logging.set_verbosity(optuna.logging.INFO)
    study, created = _open_study(storage, name, s)
    if created:
        parent_id = None
    elif workers:
        parent_id = workers.shared_parent(study, exp_id, name)
    else:
        parent_id = _own_parent(study, exp_id)
    parent_id = parent_id or _create_parent(study, exp_id, name, s, probe)

    def objective(trial: optuna.Trial) -> float:
        lr = trial.suggest_float("lr", s.lr_low, s.lr_high, log=True)
        configs = [trial_config(lr, seed, fold) for seed, fold in s.runs]
        return _run_trial(trial, configs, data, parent_id, name, meta["params_hash"], ws.cache_dir)

    if not workers:
        for left in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            retry_left_trial(study, left, "its sweep was killed")
    done = finished(study)
    print(f"study {name} in {tracking.mask(s.storage)}: {done}/{s.n_trials} trials finished"
          + ("" if done < s.n_trials else "; nothing to run"))
    if workers:
        ran = workers.run_missing(study, objective, s.n_trials, s.heartbeat_seconds)
        marker = workers.await_finaliser(study, ran, parent_id)
    else:
        study.optimize(objective, n_trials=max(0, s.n_trials - done))
        marker = str(finished(study))
    return _finalise(study, s, probe.model, probe.freeze, name, parent_id, marker)


def study_name(cfg: training.RunConfig, s: SweepConfig, data_hash: str, code: str) -> str:
    """``<model>-<freeze>-<identity hash>``.

    The identity covers everything a trial's value depends on: the feature bytes (``data_hash``),
    the code (``code``: this package's source), and every setting of the objective (epochs, the
    trial's seeds and folds, lr range, batch size, ...). Changing any of them starts a fresh study
    instead of finding an old, complete one and returning its now meaningless best learning rate.
    """
    run = {k: v for k, v in asdict(cfg).items() if k not in ("lr", "device", "compile", "seed", "fold")}
    identity = {"run": run, "seeds": list(s.seeds), "folds": list(s.folds),
                "lr_low": s.lr_low, "lr_high": s.lr_high, "data": data_hash, "code": code,
                "sampler_seed": s.sampler_seed, "pruner": [s.pruner_warmup_epochs, s.pruner_startup_trials]}
    return f"{cfg.model}-{cfg.freeze}-{json_hash(identity, 12)}"


# --------------------------------------------------------------------------- validation

def _check_space(s: SweepConfig) -> None:
    # config.validate checks these too; kept here for callers that build params by hand.
    if not isinstance(s.n_trials, int) or s.n_trials < 1:
        raise UserError(f"sweep.n_trials = {s.n_trials!r} is not allowed; expected an integer >= 1")
    if not (0 < s.lr_low < s.lr_high):
        raise UserError(f"sweep.lr_low = {s.lr_low:g} must be above 0 and below "
                        f"sweep.lr_high = {s.lr_high:g} (an empty or inverted learning-rate range)")


# --------------------------------------------------------------------------- study

def _own_parent(study: optuna.Study, exp_id: str) -> str | None:
    """The parent run an earlier run of this (lone) study created in this experiment, if any."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if not run_id:
        return None
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except Exception:  # noqa: BLE001 - recorded for another tracking store
        return None
    active = run.info.experiment_id == exp_id and run.info.lifecycle_stage == "active"
    return run_id if active else None



def _open_study(storage, name: str, s: SweepConfig):
    """(study, created): ``created`` is True in exactly one worker (the storage's unique insert)."""
    kwargs = {
        "study_name": name, "storage": storage,
        "sampler": TrialSeededTPE(s.sampler_seed),
        "pruner": optuna.pruners.MedianPruner(n_startup_trials=s.pruner_startup_trials,
                                              n_warmup_steps=s.pruner_warmup_epochs),
    }
    try:
        return optuna.create_study(direction="maximize", load_if_exists=False, **kwargs), True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kwargs)
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise UserError(f"Optuna study {name} exists but minimises; delete it or use another "
                            "storage") from None
        return study, False


# --------------------------------------------------------------------------- one trial

def run_key(cfg: training.RunConfig) -> str:
    """A trial run's prefix for its MLflow metrics: ``seed<k>/fold<c>``."""
    return f"seed{cfg.seed}/fold{cfg.fold}"


def _run_trial(trial, configs: list[training.RunConfig], data: dict[int, training.Data], parent_id: str,
               name: str, data_hash: str, cache_dir: Path | None = None) -> float:
    """Train the trial's runs one after another; return the mean of their best validation accuracies.

    Per run the child run logs every epoch's row as ``seed<k>/fold<c>/<metric>`` and its best as
    ``best_val_acc/seed<k>/fold<c>``; at epoch e of the last run it reports (to Optuna, and as
    ``mean_best_val_acc``) the mean over runs of the best validation accuracy up to epoch e.
    """
    first = configs[0]
    retry_of = trial.user_attrs.get("retry_of")
    tags = {"optuna_study": name, "optuna_trial": str(trial.number),
            "sweep_role": "trial", "model": first.model, "freeze_mode": first.freeze,
            "features_params_hash": data_hash}
    if retry_of is not None:
        tags["retry_of"] = str(retry_of)
    pruned: optuna.TrialPruned | None = None
    curves: list[list[float]] = []  # per run: validation accuracy per epoch
    with tracking.run(f"{name}/trial-{trial.number}", tags=tags, parent_run_id=parent_id) as active:
        trial.set_user_attr(RUN_ATTR, active.info.run_id)
        tracking.log_params({"lr": first.lr, "trial_number": trial.number, "model": first.model,
                             "freeze": first.freeze, "epochs": first.epochs,
                             "seeds": sorted({c.seed for c in configs}),
                             "folds": sorted({c.fold for c in configs}),
                             "batch_size": first.batch_size, "momentum": first.momentum,
                             "weight_decay": first.weight_decay, "optimizer": first.optimizer,
                             "schedule": first.schedule, "warmup_epochs": first.warmup_epochs,
                             "augment": first.augment, "layer_decay": first.layer_decay,
                             "lp_epochs": first.lp_epochs, "study": name})
        try:
            for i, cfg in enumerate(configs):
                curve: list[float] = []
                curves.append(curve)
                last = i == len(configs) - 1

                def on_epoch(epoch: int, row: dict, cfg=cfg, curve=curve, last=last) -> None:
                    curve.append(row["val_acc"])
                    tracking.log_metrics({f"{run_key(cfg)}/{k}": v for k, v in row.items()}, step=epoch)
                    if not last:
                        return
                    value = mean_best_so_far(curves, epoch)
                    tracking.log_metrics({"mean_best_val_acc": value}, step=epoch)
                    trial.report(value, epoch)
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"mean best val acc {value:.1f} % at epoch {epoch + 1} "
                                                 "is below the median of earlier trials")

                with tempfile.TemporaryDirectory(prefix="tfreeze-trial-") as workdir:
                    # A trial is never resumed (a killed one is retried), so no resumable state.
                    # The objective is validation accuracy; fit's test score is never read here.
                    training.fit(cfg, data[cfg.fold], Path(workdir), on_epoch=on_epoch, cache_dir=cache_dir,
                                 checkpoint_seconds=float("inf"))
                best = max(curve)
                tracking.log_metrics({f"best_val_acc/{run_key(cfg)}": best,
                                      f"best_epoch/{run_key(cfg)}": curve.index(best) + 1})
        except optuna.TrialPruned as err:
            pruned = err
            mlflow.set_tag("state", "pruned")
        except BaseException:
            mlflow.set_tag("state", "failed")
            raise
        else:
            value = mean_best_so_far(curves, max(len(c) for c in curves) - 1)
            tracking.log_metrics({"best_val_acc": value})
            mlflow.set_tag("state", "complete")
        trial.set_user_attr("runs", [{"seed": c.seed, "fold": c.fold, "best_val_acc": max(v)}
                                     for c, v in zip(configs, curves, strict=False) if v])
    if pruned is not None:
        raise pruned
    return value


def mean_best_so_far(curves: list[list[float]], epoch: int) -> float:
    """Mean over runs of each run's best validation accuracy in epochs 0 .. ``epoch``."""
    return float(np.mean([max(curve[: epoch + 1]) for curve in curves]))


# --------------------------------------------------------------------------- MLflow parent run

def _create_parent(study: optuna.Study, exp_id: str, name: str, s: SweepConfig,
                   cfg: training.RunConfig) -> str:
    """The study's MLflow parent run, with the sweep's settings as params; its id kept in the study."""
    client = mlflow.MlflowClient()
    tags = {"optuna_study": name, "sweep_role": "parent", "model": cfg.model, "freeze_mode": cfg.freeze,
            "recipe": s.recipe, "optuna_storage": tracking.mask(s.storage), "code_hash": code_hash(),
            **tracking.git_tags()}
    run = tracking.retry_locked(client.create_run)(exp_id, run_name=f"sweep/{name}", tags=tags)
    params = {"study": name, "model": cfg.model, "freeze": cfg.freeze, "seeds": list(s.seeds),
              "folds": list(s.folds),
              "storage": tracking.mask(s.storage), "lr_low": s.lr_low,
              "lr_high": s.lr_high, "epochs": s.epochs, "sampler_seed": s.sampler_seed,
              "pruner_warmup_epochs": s.pruner_warmup_epochs,
              "pruner_startup_trials": s.pruner_startup_trials,
              **{f"train.{k}": getattr(cfg, k) for k in ("batch_size", "momentum", "weight_decay",
                                                         "frozen_bn", "weights")}}
    # n_trials may grow between reruns and MLflow params are immutable: it is a tag, set on finish.
    for key, value in params.items():
        tracking.retry_locked(client.log_param)(run.info.run_id, key, tracking.mask(str(value)))
    study.set_user_attr(PARENT_ATTR, run.info.run_id)
    return run.info.run_id


# --------------------------------------------------------------------------- results

def summary(study, s: SweepConfig, model: str, freeze: str, name: str, parent_id: str) -> dict:
    """The JSON written for the study: deterministic, whichever worker computes it."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise UserError(f"study {name}: no trial completed (all pruned or failed); "
                        "check the learning-rate range and sweep.epochs")
    best = max(complete, key=lambda t: (t.value, -t.number))
    table = []
    for t in trials:
        last = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
        table.append({"number": t.number, "lr": t.params.get("lr"), "value": t.value,
                      "state": t.state.name.lower(), "epochs": len(t.intermediate_values),
                      "last_val_acc": last, "retry_of": t.user_attrs.get("retry_of"),
                      "runs": t.user_attrs.get("runs", [])})
    done = sum(t.state in FINISHED for t in trials)
    return {
        "model": model, "freeze": freeze, "recipe": s.recipe, "study": name,
        "storage": tracking.mask(s.storage),
        "objective": "mean over (seed, fold) runs of the best validation accuracy (%)",
        "direction": "maximize", "seeds": list(s.seeds), "folds": list(s.folds),
        "best_lr": best.params["lr"], "best_value": best.value, "best_trial": best.number,
        "n_trials": s.n_trials, "n_finished": done,
        "n_complete": len(complete), "n_pruned": done - len(complete),
        "epochs": s.epochs, "lr_low": s.lr_low, "lr_high": s.lr_high,
        "mlflow_parent_run_id": parent_id, "trials": table,
    }


def _finalise(study: optuna.Study, s: SweepConfig, model: str, freeze: str, name: str, parent_id: str,
              marker: str) -> dict:
    """Write the JSON and complete the parent run (unless it carries ``marker``: already done)."""
    result = summary(study, s, model, freeze, name, parent_id)
    out = s.output_path(model, freeze)
    text = json.dumps(result, indent=2, sort_keys=True, default=str) + "\n"
    if not out.is_file() or out.read_text() != text:
        atomic.write_text(out, text)
        print(f"wrote {out}")
    if finalised_with(parent_id) != marker:
        _finish_parent(mlflow.MlflowClient(), parent_id, result, out)
    print(f"study {name}: best lr {result['best_lr']:.4g} (val acc {result['best_value']:.1f} %, "
          f"trial {result['best_trial']}) over {result['n_finished']} trials; "
          f"MLflow parent run {parent_id}")
    return result


def _finish_parent(client, parent_id: str, result: dict, out: Path) -> None:
    locked = tracking.retry_locked
    step = result["n_finished"]
    locked(client.log_metric)(parent_id, "best_lr", result["best_lr"], step=step)
    locked(client.log_metric)(parent_id, "best_val_acc", result["best_value"], step=step)
    locked(client.log_metric)(parent_id, "n_finished", result["n_finished"], step=step)
    with tempfile.TemporaryDirectory(prefix="tfreeze-sweep-") as tmp:
        for path in plot_sweep(result, Path(tmp)):
            locked(client.log_artifact)(parent_id, str(path), "figures")
    locked(client.log_artifact)(parent_id, str(out), "sweep")
    for key, value in {"best_trial": result["best_trial"], "n_trials": result["n_trials"],
                       "state": "complete", FINALISED_TAG: result["n_finished"]}.items():
        locked(client.set_tag)(parent_id, key, str(value))
    locked(client.set_terminated)(parent_id, "FINISHED")


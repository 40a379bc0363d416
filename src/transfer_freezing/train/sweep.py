"""Optuna learning-rate sweep per (model, freeze mode), every trial an MLflow child run.

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

One study per (model, freeze mode, data, objective settings), stored at a URL (sqlite file by
default, PostgreSQL for several machines). ``sweep.n_trials`` is the study's total across all
workers and reruns: every worker counts the finished (complete + pruned) trials in storage and only
runs what is missing, so a killed sweep resumes and a second worker shares the work.

How the total stays exact with several workers:
- before asking for a trial, a worker counts finished + running + waiting trials; when they
  already fill ``n_trials`` it waits for the other workers instead of starting another trial;
- a trial, once created, counts the non-failed trials numbered below it (numbers are assigned
  under a lock by the storage); if those fill ``n_trials`` it was created in a race and is failed
  at once (state FAIL, user attr ``over_budget``) before any training, so at most ``n_trials``
  trials ever finish;
- a trial left RUNNING by a killed worker stops sending heartbeats; after ``2 x
  runtime.sweep_heartbeat_seconds`` any worker fails it, marks its MLflow run FAILED and queues a retry
  with the same learning rate (Optuna's ``RetryHeartbeatStaleTrialCallback``), so it is neither
  lost nor blocking.

MLflow: one parent run per study (tags ``optuna_study`` and ``sweep_role=parent``), whose id is
kept as the study's user attr ``mlflow_parent_run_id``. The worker whose ``create_study`` created
the study (an atomic insert, so exactly one) creates the parent; the others wait for the attr.
Remaining race (documented, accepted): if that worker dies between creating the study and
storing the attr, the others fall back to searching MLflow by tag and may each create a parent.
Each trial is a child run (tag ``mlflow.parentRunId``) with its params, per-epoch metrics and a
``state`` tag (complete / pruned / failed). When the study has all its trials, the parent gets
``best_lr`` / ``best_val_acc`` and the two figures, and ``reports/sweep/<model>-<freeze>.json``
is written (the same bytes whichever worker writes it).
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
from optuna.trial import TrialState

from .. import atomic
from ..config import Params, resolve_url
from ..errors import UserError, first_line
from ..model import freezing
from . import core as training
from . import stage as train_stage
from . import tracking

PARENT_ATTR = "mlflow_parent_run_id"
RUN_ATTR = "mlflow_run_id"
PARENT_WAIT_S = 60.0  # how long a worker waits for the study's creator to name the parent run
FINALISE_WAIT_S = 30.0  # how long a worker waits for the one that ran the last trial to finalise
MAX_RETRY = 2  # a stale (killed) trial is re-queued at most this many times


class _OverBudget(Exception):
    """A trial created in a race after the study's ``n_trials`` were already taken."""


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

    @classmethod
    def from_params(cls, p: Params) -> SweepConfig:
        s = p["sweep"]
        storage = resolve_url(os.environ.get("OPTUNA_STORAGE") or s["storage"])
        return cls(s["n_trials"], s["lr_low"], s["lr_high"], s["epochs"], tuple(s["seeds"]),
                   tuple(s["folds"]), s["sampler_seed"], s["pruner_warmup_epochs"],
                   s["pruner_startup_trials"], storage, p["runtime"]["sweep_heartbeat_seconds"],
                   Path(s["out"]))

    @property
    def runs(self) -> list[tuple[int, int]]:
        """A trial's (seed, fold) runs, in the order they train."""
        return [(seed, fold) for seed in self.seeds for fold in self.folds]

    def output_path(self, model: str, freeze: str) -> Path:
        return self.out / f"{model}-{freeze}.json"


# --------------------------------------------------------------------------- public entry point

def run_study(p: Params, model: str, freeze: str) -> dict:
    """The sweep stage's entry point: resolve params once, then run the (model, freeze) study."""
    s = SweepConfig.from_params(p)
    _check_space(s)
    freezing.plan(model, freeze)  # unknown mode -> one line, before any work
    ws = train_stage.Workspace.from_params(p)
    meta = ws.features.read_meta()

    def trial_config(lr: float, seed: int, fold: int) -> training.RunConfig:
        return train_stage.run_config(p, model, freeze, seed, lr, len(meta["classes"]), epochs=s.epochs,
                                      fold=fold)

    with training.sigterm_as_interrupt():
        return sweep(s, ws, model, freeze, trial_config)


def sweep(s: SweepConfig, ws: train_stage.Workspace, model: str, freeze: str,
          trial_config: Callable[[float, int, int], training.RunConfig]) -> dict:
    """Run what is missing of the (model, freeze) study; return the summary written to JSON.

    Order: validate (search space, features, storage, tracking) before any training; then run or
    wait for the missing trials; then write the JSON and complete the parent run.
    """
    probe = trial_config(s.lr_low, *s.runs[0])
    data: dict[int, training.Data] = {}
    for fold in s.folds:  # checks features and batch size of every fold a trial trains on
        data[fold], meta = ws.load_data(probe.batch_size, fold)
    name = study_name(probe, s, ws.features.content_hash(), code_hash())
    storage = open_storage(s.storage, s.heartbeat_seconds)
    exp_id = tracking.connect(ws.tracking)
    optuna.logging.set_verbosity(optuna.logging.INFO)
    study, created = _open_study(storage, name, s)
    parent_id = _parent_run(study, created, exp_id, name, s, probe)
    ran: set[int] = set()

    def objective(trial: optuna.Trial) -> float:
        _check_budget(trial, s.n_trials)
        ran.add(trial.number)
        lr = trial.suggest_float("lr", s.lr_low, s.lr_high, log=True)
        configs = [trial_config(lr, seed, fold) for seed, fold in s.runs]
        return _run_trial(trial, configs, data, parent_id, name, meta["params_hash"], ws.cache_dir)

    done, _, _ = _tally(study)
    print(f"study {name} in {tracking.mask(s.storage)}: {done}/{s.n_trials} trials finished"
          + ("" if done < s.n_trials else "; nothing to run"))
    _work(study, objective, s.n_trials, s.heartbeat_seconds)
    return _finalise(study, s, probe.model, probe.freeze, name, parent_id, ran)


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
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.model}-{cfg.freeze}-{digest}"


def code_hash() -> str:
    """SHA-256 (12 hex digits) of this package's Python source, file names included."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def open_storage(url: str, heartbeat_seconds: int):
    """An ``RDBStorage`` with heartbeats; any failure -> one line naming the masked URL."""
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    for attempt in range(5):
        try:
            with warnings.catch_warnings(), tracking.sqlite_setup_lock(url):
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_seconds,
                    grace_period=2 * heartbeat_seconds,
                    heartbeat_stale_trial_callback=_StaleTrial(),
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
            # Two workers creating the schema of a fresh database at once: the loser retries.
            if attempt == 4 or "already exists" not in str(err) and "duplicate" not in str(err):
                raise UserError(f"Optuna storage {tracking.mask(url)} failed: {_first_line(err)}") from err
            time.sleep(0.5 * (attempt + 1))
        except Exception as err:  # noqa: BLE001 - bad URL, missing driver, unreachable: one line
            raise UserError(f"Optuna storage {tracking.mask(url)} failed: {_first_line(err)}") from err
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- validation

def _check_space(s: SweepConfig) -> None:
    # config.validate checks these too; kept here for callers that build params by hand.
    if not isinstance(s.n_trials, int) or s.n_trials < 1:
        raise UserError(f"sweep.n_trials = {s.n_trials!r} is not allowed; expected an integer >= 1")
    if not (0 < s.lr_low < s.lr_high):
        raise UserError(f"sweep.lr_low = {s.lr_low:g} must be above 0 and below "
                        f"sweep.lr_high = {s.lr_high:g} (an empty or inverted learning-rate range)")


def _first_line(err: BaseException) -> str:
    return tracking.mask(first_line(err))


# --------------------------------------------------------------------------- study and scheduling

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


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose random state is seeded from (``sweep.sampler_seed``, trial number).

    A plain ``TPESampler(seed=...)`` restarts the same random sequence in every worker and every
    rerun, so two workers (or a rerun after a kill) would propose the same learning rates during
    TPE's random start-up phase. Seeding per trial number keeps the sweep reproducible and makes
    every trial's proposal distinct. ``constant_liar`` keeps concurrent workers from sampling next
    to trials that are still running.
    """

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._tpe = self._make(0)

    def _make(self, number: int) -> optuna.samplers.TPESampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # SeedSequence mixes (seed, number): nearby integer seeds give nearly equal first
            # draws from numpy's Mersenne Twister (seeds 0 and 3 both start at ~0.55).
            seed = int(np.random.SeedSequence([self._seed, number]).generate_state(1)[0])
            return optuna.samplers.TPESampler(seed=seed,
                                              constant_liar=True)

    def before_trial(self, study, trial) -> None:
        self._tpe = self._make(trial.number)
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self._tpe.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._tpe.reseed_rng()


def _tally(study) -> tuple[int, int, int]:
    """(finished = complete + pruned, running, waiting) trials in storage."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    done = sum(st in (TrialState.COMPLETE, TrialState.PRUNED) for st in states)
    return done, states.count(TrialState.RUNNING), states.count(TrialState.WAITING)


def _work(study, objective, n_total: int, heartbeat_seconds: int) -> None:
    """Run trials until the study holds ``n_total`` finished ones, sharing with other workers."""
    poll = min(2.0, float(heartbeat_seconds))
    waiting_said = False
    while True:
        _fail_stale(study)
        done, running, waiting = _tally(study)
        if done >= n_total:
            return
        if waiting or done + running < n_total:
            waiting_said = False
            # optimize() fails stale trials, takes a queued retry first, beats the heartbeat
            # while the objective runs and records pruned / failed states for us.
            study.optimize(objective, n_trials=1, catch=(_OverBudget,))
            continue
        if not waiting_said:
            print(f"waiting for {running} trial(s) running in other workers "
                  f"(a killed worker's trial is retried after {2 * heartbeat_seconds} s)")
            waiting_said = True
        time.sleep(poll)


def _fail_stale(study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _check_budget(trial, n_total: int) -> None:
    """Fail a trial created in a race: count the non-failed trials numbered below it."""
    before = [t for t in trial.study.get_trials(deepcopy=False)
              if t.number < trial.number and t.state != TrialState.FAIL]
    if len(before) >= n_total:
        trial.set_user_attr("over_budget", True)
        raise _OverBudget(f"the study's {n_total} trials were already taken by other workers; "
                          "this trial did not train")


class _StaleTrial:
    """Heartbeat-stale trial: mark its MLflow run FAILED, then queue a retry (same lr)."""

    def __init__(self) -> None:
        from optuna.storages import RetryHeartbeatStaleTrialCallback

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def __call__(self, study, trial) -> None:
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id:
            with contextlib.suppress(Exception):  # the tracking store may be another one now
                client = mlflow.MlflowClient()
                tracking.retry_locked(client.set_tag)(run_id, "state", "failed")
                tracking.retry_locked(client.set_tag)(
                    run_id, "error", "worker stopped sending heartbeats (killed?); trial retried")
                tracking.retry_locked(client.set_terminated)(run_id, "FAILED")
        retries = len(trial.system_attrs.get("retry_history", []))
        then = "re-queued with the same lr" if retries < MAX_RETRY else f"not retried ({retries} retries)"
        print(f"trial {trial.number} stopped sending heartbeats (worker killed?): failed, {then}")
        retry = copy.deepcopy(trial)
        attrs = {k: v for k, v in trial.user_attrs.items() if k != RUN_ATTR}
        retry.user_attrs = {**attrs, "retry_of": attrs.get("retry_of", trial.number)}
        self._retry(study, retry)


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
                             "augment": first.augment, "study": name})
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

def _parent_run(study, created: bool, exp_id: str, name: str, s: SweepConfig,
                cfg: training.RunConfig) -> str:
    """The study's one parent run id (see the module docstring for who creates it)."""
    client = mlflow.MlflowClient()
    if not created:
        deadline = time.monotonic() + PARENT_WAIT_S
        while True:
            run_id = study.user_attrs.get(PARENT_ATTR)
            if run_id:
                if _run_in_experiment(client, run_id, exp_id):
                    return run_id
                break  # recorded for another tracking store: find or make one here
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        found = tracking.retry_locked(client.search_runs)(
            [exp_id], filter_string=f"tags.optuna_study = '{name}' and tags.sweep_role = 'parent'",
            order_by=["attributes.start_time ASC"], max_results=1,
        )
        if found:
            study.set_user_attr(PARENT_ATTR, found[0].info.run_id)
            return found[0].info.run_id
    tags = {"optuna_study": name, "sweep_role": "parent", "model": cfg.model, "freeze_mode": cfg.freeze,
            "optuna_storage": tracking.mask(s.storage), "code_hash": code_hash(), **tracking.git_tags()}
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


def _run_in_experiment(client, run_id: str, exp_id: str) -> bool:
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - not in this store
        return False
    return run.info.experiment_id == exp_id and run.info.lifecycle_stage == "active"


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
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    return {
        "model": model, "freeze": freeze, "study": name, "storage": tracking.mask(s.storage),
        "objective": "mean over (seed, fold) runs of the best validation accuracy (%)",
        "direction": "maximize", "seeds": list(s.seeds), "folds": list(s.folds),
        "best_lr": best.params["lr"], "best_value": best.value, "best_trial": best.number,
        "n_trials": s.n_trials, "n_finished": done,
        "n_complete": len(complete), "n_pruned": done - len(complete),
        "epochs": s.epochs, "lr_low": s.lr_low, "lr_high": s.lr_high,
        "mlflow_parent_run_id": parent_id, "trials": table,
    }


def _finalise(study, s: SweepConfig, model: str, freeze: str, name: str, parent_id: str,
              ran: set[int]) -> dict:
    """Write the JSON and complete the parent run, once the study holds all its trials."""
    n_total = s.n_trials
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if len(finished) < n_total:  # cannot happen after _work; kept for safety
        raise UserError(f"study {name}: only {len(finished)}/{n_total} trials finished")
    last = max(finished, key=lambda t: (t.datetime_complete or datetime.datetime.min, t.number))
    client = mlflow.MlflowClient()
    marker = str(len(finished))
    if last.number not in ran:
        # Another worker ran the last trial and finalises: wait for it, take over if it died
        # (no wait when that trial ended long ago, e.g. a rerun after a kill at this point).
        age = (datetime.datetime.now() - (last.datetime_complete or datetime.datetime.min)).total_seconds()
        deadline = time.monotonic() + max(0.0, FINALISE_WAIT_S - age)
        while time.monotonic() < deadline and _parent_tag(client, parent_id) != marker:
            time.sleep(1.0)
    result = summary(study, s, model, freeze, name, parent_id)
    out = s.output_path(model, freeze)
    text = json.dumps(result, indent=2, sort_keys=True, default=str) + "\n"
    if not out.is_file() or out.read_text() != text:
        atomic.write_text(out, text)
        print(f"wrote {out}")
    if _parent_tag(client, parent_id) != marker:
        _finish_parent(client, parent_id, result, out)
    print(f"study {name}: best lr {result['best_lr']:.4g} (val acc {result['best_value']:.1f} %, "
          f"trial {result['best_trial']}) over {result['n_finished']} trials; "
          f"MLflow parent run {parent_id}")
    return result


def _parent_tag(client, parent_id: str) -> str | None:
    try:
        return client.get_run(parent_id).data.tags.get("sweep_finalised_trials")
    except Exception:  # noqa: BLE001
        return None


def _finish_parent(client, parent_id: str, result: dict, out: Path) -> None:
    locked = tracking.retry_locked
    step = result["n_finished"]
    locked(client.log_metric)(parent_id, "best_lr", result["best_lr"], step=step)
    locked(client.log_metric)(parent_id, "best_val_acc", result["best_value"], step=step)
    locked(client.log_metric)(parent_id, "n_finished", result["n_finished"], step=step)
    with tempfile.TemporaryDirectory(prefix="tfreeze-sweep-") as tmp:
        for path in plot_figures(result, Path(tmp)):
            locked(client.log_artifact)(parent_id, str(path), "figures")
    locked(client.log_artifact)(parent_id, str(out), "sweep")
    for key, value in {"best_trial": result["best_trial"], "n_trials": result["n_trials"],
                       "state": "complete", "sweep_finalised_trials": result["n_finished"]}.items():
        locked(client.set_tag)(parent_id, key, str(value))
    locked(client.set_terminated)(parent_id, "FINISHED")


def plot_figures(result: dict, folder: Path) -> list[Path]:
    """lr vs validation accuracy, and the optimisation history, as PNGs in ``folder``."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in worker processes

    rows = [r for r in result["trials"] if r["state"] in ("complete", "pruned") and r["lr"] is not None]
    comp = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned" and r["last_val_acc"] is not None]
    title = f"{result['model']} / {result['freeze']}"
    paths = []

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter([r["lr"] for r in comp], [r["value"] for r in comp], label="complete (best val acc)")
    ax.scatter([r["lr"] for r in pruned], [r["last_val_acc"] for r in pruned], marker="x",
               color="grey", label="pruned (last val acc)")
    ax.scatter([result["best_lr"]], [result["best_value"]], s=160, facecolors="none",
               edgecolors="red", label=f"best lr {result['best_lr']:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{title}: learning rate vs validation accuracy")
    ax.legend(fontsize="small")
    paths.append(folder / "lr_vs_val_acc.png")
    fig.savefig(paths[-1], dpi=120)

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter([r["number"] for r in comp], [r["value"] for r in comp], label="complete")
    ax.scatter([r["number"] for r in pruned], [r["last_val_acc"] for r in pruned], marker="x",
               color="grey", label="pruned (last val acc)")
    best_so_far, xs, ys = float("-inf"), [], []
    for r in sorted(comp, key=lambda r: r["number"]):
        best_so_far = max(best_so_far, r["value"])
        xs.append(r["number"])
        ys.append(best_so_far)
    ax.step(xs, ys, where="post", color="red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{title}: optimisation history")
    ax.legend(fontsize="small")
    paths.append(folder / "optimization_history.png")
    fig.savefig(paths[-1], dpi=120)
    return paths


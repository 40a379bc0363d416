"""One sweep study shared by several processes: exact trial budget, stale trials, who finalises.

A ``tfreeze sweep`` process cannot tell whether it is alone on its study: the workers of
``tfreeze sweep --workers N`` (Ray tasks), a process on another machine against the same PostgreSQL
storage, two ``dvc repro`` runs, or a rerun that finds a trial its killed predecessor left RUNNING
all look the same from inside. So every sweep runs its trials through this module; alone on a
study, each guard below costs one storage query and never waits.

The total stays exact (``sweep.n_trials`` finished = complete + pruned trials, never more):
- before asking for a trial, a worker counts finished + running + waiting trials; when they
  already fill ``n_trials`` it waits for the other workers instead of starting another trial;
- a trial, once created, counts the non-failed trials numbered below it (numbers are assigned
  under a lock by the storage); if those fill ``n_trials`` it was created in a race and is failed
  at once (state FAIL, user attr ``over_budget``) before any training.
Optuna's ``MaxTrialsCallback(n_trials, states=(COMPLETE, PRUNED))`` is not enough: it stops a
worker only after its trial ends, so N workers can overshoot by up to N - 1 trials, and it does
not keep a worker waiting for the others' last trials (every worker writes the result).

Stale trials are Optuna's heartbeat: a trial left RUNNING by a killed worker stops beating; after
``2 x runtime.sweep_heartbeat_seconds`` any worker fails it (``fail_stale_trials``), marks its MLflow run
FAILED and queues a retry with the same learning rate (``RetryHeartbeatStaleTrialCallback``), so it
is neither lost nor blocking.

The MLflow parent: the worker whose ``create_study`` created the study (an atomic insert, so
exactly one) creates it; the others wait for its id in the study's user attrs. Remaining race
(documented, accepted): if that worker dies between creating the study and storing the attr, the
others fall back to searching MLflow by tag and may each create a parent. At the end the worker
that ran the last trial finalises (JSON + parent run); the others wait for it a while, then take
over.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import time
import warnings
from collections.abc import Callable
from typing import Any

import mlflow
import numpy as np
import optuna
from optuna.trial import TrialState

from ..errors import UserError, first_line
from . import tracking

PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: the MLflow parent run's id
RUN_ATTR = "mlflow_run_id"  # trial user attr: the trial's MLflow child run id
FINALISED_TAG = "sweep_finalised_trials"  # parent tag: the number of finished trials it was finalised with
PARENT_WAIT_S = 60.0  # how long a worker waits for the study's creator to name the parent run
FINALISE_WAIT_S = 30.0  # how long a worker waits for the one that ran the last trial to finalise
MAX_RETRY = 2  # a stale (killed) trial is re-queued at most this many times
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(url: str, heartbeat_seconds: int) -> optuna.storages.RDBStorage:
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
                    grace_period=2 * heartbeat_seconds, heartbeat_stale_trial_callback=_StaleTrial())
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
            # Two workers creating the schema of a fresh database at once: the loser retries.
            if attempt == 4 or "already exists" not in str(err) and "duplicate" not in str(err):
                raise _storage_error(url, err) from err
            time.sleep(0.5 * (attempt + 1))
        except Exception as err:  # noqa: BLE001 - bad URL, missing driver, unreachable: one line
            raise _storage_error(url, err) from err
    raise AssertionError("unreachable")


def _storage_error(url: str, err: BaseException) -> UserError:
    return UserError(f"Optuna storage {tracking.mask(url)} failed: {tracking.mask(first_line(err))}")


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose random state is seeded from (``sweep.sampler_seed``, trial number).

    A plain ``TPESampler(seed=...)`` restarts the same random sequence in every process, so two
    workers (or a rerun after a kill) would propose the same learning rates during TPE's random
    start-up phase. Seeding per trial number keeps the sweep reproducible and makes every trial's
    proposal distinct. ``constant_liar`` keeps concurrent workers from sampling next to trials that
    are still running.
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
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

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


# --------------------------------------------------------------------------- the trial budget

class _OverBudget(Exception):
    """A trial created in a race after the study's ``n_trials`` were already taken."""


def tally(study: optuna.Study) -> tuple[int, int, int]:
    """(finished = complete + pruned, running, waiting) trials in storage."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    done = sum(st in FINISHED for st in states)
    return done, states.count(TrialState.RUNNING), states.count(TrialState.WAITING)


def run_missing(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_total: int,
                heartbeat_seconds: int) -> set[int]:
    """Run trials until the study holds ``n_total`` finished ones, sharing with other workers.

    Returns the numbers of the trials this process ran (including any it lost to a race).
    """
    ran: set[int] = set()

    def guarded(trial: optuna.Trial) -> float:
        _check_budget(trial, n_total)
        ran.add(trial.number)
        return objective(trial)

    poll = min(2.0, float(heartbeat_seconds))
    waiting_said = False
    while True:
        _fail_stale(study)
        done, running, waiting = tally(study)
        if done >= n_total:
            return ran
        if waiting or done + running < n_total:
            waiting_said = False
            # optimize() fails stale trials, takes a queued retry first, beats the heartbeat
            # while the objective runs and records pruned / failed states for us.
            study.optimize(guarded, n_trials=1, catch=(_OverBudget,))
            continue
        if not waiting_said:
            print(f"waiting for {running} trial(s) running in other workers "
                  f"(a killed worker's trial is retried after {2 * heartbeat_seconds} s)")
            waiting_said = True
        time.sleep(poll)


def _check_budget(trial: optuna.Trial, n_total: int) -> None:
    """Fail a trial created in a race: count the non-failed trials numbered below it."""
    before = [t for t in trial.study.get_trials(deepcopy=False)
              if t.number < trial.number and t.state != TrialState.FAIL]
    if len(before) >= n_total:
        trial.set_user_attr("over_budget", True)
        raise _OverBudget(f"the study's {n_total} trials were already taken by other workers; "
                          "this trial did not train")


# --------------------------------------------------------------------------- stale trials

def _fail_stale(study: optuna.Study) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


class _StaleTrial:
    """Heartbeat-stale trial: mark its MLflow run FAILED, then queue a retry (same lr)."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
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


# --------------------------------------------------------------------------- the MLflow parent run

def shared_parent(study: optuna.Study, exp_id: str, name: str) -> str | None:
    """The parent run another worker created for ``study`` (None: this worker must create one).

    Waits up to ``PARENT_WAIT_S`` for the study's creator to store the id, then searches MLflow by
    tag; an id recorded for another tracking store is not used.
    """
    client = mlflow.MlflowClient()
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
    if not found:
        return None
    study.set_user_attr(PARENT_ATTR, found[0].info.run_id)
    return found[0].info.run_id


def _run_in_experiment(client, run_id: str, exp_id: str) -> bool:
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - not in this store
        return False
    return run.info.experiment_id == exp_id and run.info.lifecycle_stage == "active"


def finalised_with(parent_id: str) -> str | None:
    """The parent run's ``FINALISED_TAG`` (None: not finalised, or not readable)."""
    try:
        return mlflow.MlflowClient().get_run(parent_id).data.tags.get(FINALISED_TAG)
    except Exception:  # noqa: BLE001
        return None


def await_finaliser(study: optuna.Study, ran: set[int], parent_id: str) -> str:
    """Wait (up to ``FINALISE_WAIT_S``) for the worker that ran the study's last trial to finalise
    the parent, unless this worker ran it; return the marker a finalised parent carries.

    No wait when that trial ended long ago (e.g. a rerun after a kill at this point): whoever comes
    then takes over.
    """
    finished = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    last = max(finished, key=lambda t: (t.datetime_complete or datetime.datetime.min, t.number))
    marker = str(len(finished))
    if last.number not in ran:
        age = (datetime.datetime.now() - (last.datetime_complete or datetime.datetime.min)).total_seconds()
        deadline = time.monotonic() + max(0.0, FINALISE_WAIT_S - age)
        while time.monotonic() < deadline and finalised_with(parent_id) != marker:
            time.sleep(1.0)
    return marker

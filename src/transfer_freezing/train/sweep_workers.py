"""One sweep study shared by several processes: exact trial budget, stale trials, who finalises.

Used only when several processes work on one study at once: the workers of ``tfreeze sweep
--workers N`` (Ray tasks) or ``tfreeze sweep --shared`` processes on several machines against one
PostgreSQL storage. A lone sweep (the DVC stage) is a plain ``study.optimize`` (``sweep.sweep``).
The guarantee a lone sweep gives up: it takes any trial it finds RUNNING for its killed
predecessor's, so a second process on the same study without ``--shared`` would see its running
trial failed and the total overshoot.

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
FAILED and queues a retry with the same learning rate (``sweep_storage.retry_left_trial``), so it
is neither lost nor blocking.

The MLflow parent: the worker whose ``create_study`` created the study (an atomic insert, so
exactly one) creates it; the others wait for its id in the study's user attrs. Remaining race
(documented, accepted): if that worker dies between creating the study and storing the attr, the
others fall back to searching MLflow by tag and may each create a parent. At the end the worker
that ran the last trial finalises (JSON + parent run); the others wait for it a while, then take
over.
"""

from __future__ import annotations

import datetime
import time
import warnings
from collections.abc import Callable

import mlflow
import optuna
from optuna.trial import TrialState

from . import tracking
from .sweep_storage import FINISHED, PARENT_ATTR, finalised_with, retry_left_trial

PARENT_WAIT_S = 60.0  # how long a worker waits for the study's creator to name the parent run
FINALISE_WAIT_S = 30.0  # how long a worker waits for the one that ran the last trial to finalise


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


class StaleTrial:
    """Optuna's heartbeat callback: a stale trial (its worker was killed) is retried, same lr."""

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        retry_left_trial(study, trial, "its worker stopped sending heartbeats (killed?)")


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

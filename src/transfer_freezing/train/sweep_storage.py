"""A sweep study in its Optuna storage: opening it, the sampler, and trial bookkeeping.

Shared by the lone sweep (``sweep``) and the workers sharing one study (``sweep_workers``).
"""

from __future__ import annotations

import contextlib
import time
import warnings

import mlflow
import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import UserError, first_line
from . import tracking

PARENT_ATTR = "mlflow_parent_run_id"  # study user attr: the MLflow parent run's id
RUN_ATTR = "mlflow_run_id"  # trial user attr: the trial's MLflow child run id
FINALISED_TAG = "sweep_finalised_trials"  # parent tag: the number of finished trials it was finalised with
MAX_RETRY = 2  # a killed trial is re-queued at most this many times
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_storage(url: str, heartbeat_seconds: int, stale_callback=None) -> optuna.storages.RDBStorage:
    """An ``RDBStorage`` with heartbeats; any failure -> one line naming the masked URL.

    Heartbeats let a shared study tell a killed worker's trial from a live one (``sweep_workers``);
    ``stale_callback`` is what is done with a stale one.
    """
    import sqlalchemy.exc

    engine_kwargs: dict = {}
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
                    grace_period=2 * heartbeat_seconds, heartbeat_stale_trial_callback=stale_callback)
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

    A plain ``TPESampler(seed=...)`` restarts the same random sequence in every process, so a rerun
    after a kill (or a second worker) would propose the same learning rates again during TPE's
    random start-up phase. Seeding per trial number keeps the sweep reproducible and every trial's
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


def finished(study: optuna.Study) -> int:
    """The study's finished (complete + pruned) trials: what ``sweep.n_trials`` counts."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def retry_left_trial(study: optuna.Study, trial: FrozenTrial, why: str) -> None:
    """Fail a trial a killed process left behind (its MLflow run too) and re-queue its lr.

    ``trial`` is already failed in storage when Optuna's heartbeat found it stale (shared studies);
    a lone sweep fails it here. A trial is retried at most ``MAX_RETRY`` times.
    """
    if trial.state == TrialState.RUNNING:
        study.tell(trial.number, state=TrialState.FAIL)
    run_id = trial.user_attrs.get(RUN_ATTR)
    if run_id:
        with contextlib.suppress(Exception):  # the tracking store may be another one now
            client = mlflow.MlflowClient()
            tracking.retry_locked(client.set_tag)(run_id, "state", "failed")
            tracking.retry_locked(client.set_tag)(run_id, "error", f"{why}; trial retried")
            tracking.retry_locked(client.set_terminated)(run_id, "FAILED")
    origin = trial.user_attrs.get("retry_of", trial.number)
    retries = sum(t.user_attrs.get("retry_of") == origin for t in study.get_trials(deepcopy=False))
    then = "re-queued with the same lr" if retries < MAX_RETRY else f"not retried ({retries} retries)"
    print(f"trial {trial.number} was left running ({why}): failed, {then}")
    if retries < MAX_RETRY:
        attrs = {k: v for k, v in trial.user_attrs.items() if k != RUN_ATTR}
        study.enqueue_trial(trial.params, user_attrs={**attrs, "retry_of": origin})


def finalised_with(parent_id: str) -> str | None:
    """The parent run's ``FINALISED_TAG`` (None: not finalised, or not readable)."""
    try:
        return mlflow.MlflowClient().get_run(parent_id).data.tags.get(FINALISED_TAG)
    except Exception:  # noqa: BLE001
        return None

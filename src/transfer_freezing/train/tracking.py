"""The thin MLflow layer: tracking URI and experiment, run lifecycle, retries, masked URLs."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from ..config import Params
from ..errors import UserError, first_line

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
T = TypeVar("T")


_USERINFO_PASSWORD = re.compile(r"(://[^:/@\s]*):[^/\s]*@")  # up to the userinfo's last "@"
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd|secret|token)=)[^&#\s]*")


def mask(url: str) -> str:
    """Hide the password of ``scheme://user:password@host`` URLs (logs, params, errors).

    Also a ``password=`` / ``token=`` query parameter (libpq accepts ``?password=``).
    """
    return _QUERY_SECRET.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", str(url)))


def tracking_uri(p: Params) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or p["tracking"]["uri"]


def retry_locked(fn: Callable[..., T], attempts: int = 8) -> Callable[..., T]:
    """Retry ``fn`` while sqlite says 'database is locked' (two runs logging to one store)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        for attempt in range(attempts):
            try:
                return fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - mlflow wraps sqlite errors in its own types
                if "database is locked" not in str(err) or attempt == attempts - 1:
                    raise
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    return wrapper


@contextlib.contextmanager
def sqlite_setup_lock(url: str) -> Iterator[None]:
    """Serialise first use of a ``sqlite:///`` store across processes (no-op for other URLs).

    MLflow and Optuna create and migrate a fresh database's schema on first connect; two processes
    doing that at once collide ("duplicate column", "UNIQUE constraint failed: alembic_version").
    A file lock beside the database lets the first create it and the others find it ready.
    """
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
    if not path or path == ":memory:":
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.setup.lock", timeout=300):
        yield


def connect(p: Params) -> str:
    """Point MLflow at the study's store and experiment; return the experiment id."""
    import mlflow

    uri = tracking_uri(p)
    # "Creating initial MLflow database tables..." on stderr would bury a one-line error.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    mlflow.set_tracking_uri(uri)
    name = p["tracking"]["experiment"]
    try:
        with sqlite_setup_lock(uri):
            exp = retry_locked(mlflow.get_experiment_by_name)(name)
            exp_id = exp.experiment_id if exp else _create_experiment(name, _artifact_location(p, uri))
    except Exception as err:  # noqa: BLE001 - any store failure is reported the same way
        raise UserError(f"MLflow tracking store {mask(uri)} failed: {first_line(err)}") from err
    _mark_model_training(exp_id)
    mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _mark_model_training(exp_id: str) -> None:
    """Tag the experiment so MLflow 3 opens it in its Model-training view, not the GenAI one.

    Several workers may connect at once: a tag another worker set in the meantime is fine
    (a server answers the second insert with a unique-key violation).
    """
    import mlflow

    client = mlflow.MlflowClient()
    if _experiment_kind(client, exp_id) == MODEL_TRAINING:
        return
    try:
        retry_locked(client.set_experiment_tag)(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    except Exception:
        if _experiment_kind(client, exp_id) != MODEL_TRAINING:
            raise


def _experiment_kind(client: Any, exp_id: str) -> str | None:
    return retry_locked(client.get_experiment)(exp_id).tags.get(EXPERIMENT_KIND_TAG)


def _create_experiment(name: str, artifact_location: str | None) -> str:
    """Create the experiment; if a concurrent worker created it first, use theirs."""
    import mlflow

    try:
        return retry_locked(mlflow.create_experiment)(name, artifact_location=artifact_location)
    except Exception:
        exp = retry_locked(mlflow.get_experiment_by_name)(name)
        if exp is None:
            raise
        return exp.experiment_id


def _artifact_location(p: Params, uri: str) -> str | None:
    # A local store keeps artifacts beside the db; a server decides (proxied artifacts) itself.
    if uri.startswith(("http://", "https://")):
        return None
    return Path(p["tracking"]["artifacts"]).resolve().as_uri()


def _check_server(uri: str) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
            resp.read()
    except Exception as err:  # noqa: BLE001 - unreachable in any way is one message
        raise UserError(f"MLflow tracking server {mask(uri)} is unreachable: {first_line(err)}") from err


@contextlib.contextmanager
def run(name: str, run_id: str | None = None, nested: bool = False,
        tags: dict[str, str] | None = None) -> Iterator[Any]:
    """Start (or resume) an MLflow run; an exception marks it FAILED with the error as a tag."""
    import mlflow

    active = retry_locked(mlflow.start_run)(run_id=run_id, run_name=None if run_id else name,
                                             nested=nested, tags=tags)
    try:
        yield active
    except BaseException as err:
        mlflow.set_tag("error", first_line(err)[:5000])
        retry_locked(mlflow.end_run)(status="FAILED")
        raise
    retry_locked(mlflow.end_run)(status="FINISHED")


def git_tags() -> dict[str, str]:
    """Commit and dirty flag of the working tree ('unknown' outside git)."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else "unknown"

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": git("rev-parse", "HEAD"),
            "git_dirty": "unknown" if status == "unknown" else str(bool(status)).lower()}


def log_params(params: dict[str, Any]) -> None:
    import mlflow

    clean = {k: mask(str(v))[:6000] for k, v in params.items()}
    retry_locked(mlflow.log_params)(clean)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    import mlflow

    retry_locked(mlflow.log_metrics)(metrics, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    retry_locked(mlflow.log_artifact)(str(path), artifact_path)


def fetch_runs(p: Params, run_ids: list[str]) -> dict[str, Any]:
    """Exactly these runs by id (never a search for the latest); missing ids map to None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri(p))
    found = {}
    for run_id in run_ids:
        try:
            found[run_id] = client.get_run(run_id)
        except MlflowException:
            found[run_id] = None
    return found

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
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from unittest import mock

from filelock import FileLock

from ..config import Params, resolve_path, resolve_url
from ..errors import UserError, first_line
from ..provenance import file_sha256

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


@dataclass(frozen=True)
class Tracking:
    """Where runs go: the store URI (resolved), the local artifact folder and the experiment."""

    uri: str
    artifacts: Path
    experiment: str

    @classmethod
    def from_params(cls, p: Params) -> Tracking:
        """``MLFLOW_TRACKING_URI`` overrides ``tracking.uri``; relative sqlite files and artifact
        folders are taken from the project root, so ``dvc exp run --temp`` / ``--queue`` log into
        the project's store, not into their temporary copy."""
        t = p["tracking"]
        uri = os.environ.get("MLFLOW_TRACKING_URI") or t["uri"]
        return cls(resolve_url(uri), resolve_path(t["artifacts"]), t["experiment"])


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


def connect(t: Tracking) -> str:
    """Point MLflow at the study's store and experiment; return the experiment id."""
    import mlflow

    uri = t.uri
    # "Creating initial MLflow database tables..." on stderr would bury a one-line error.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
    mlflow.set_tracking_uri(uri)
    name = t.experiment
    try:
        with sqlite_setup_lock(uri):
            exp = retry_locked(mlflow.get_experiment_by_name)(name)
            exp_id = exp.experiment_id if exp else _create_experiment(name, _artifact_location(t))
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


def _artifact_location(t: Tracking) -> str | None:
    # A local store keeps artifacts beside the db; a server decides (proxied artifacts) itself.
    if t.uri.startswith(("http://", "https://")):
        return None
    return t.artifacts.as_uri()


def _check_server(uri: str) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
            resp.read()
    except Exception as err:  # noqa: BLE001 - unreachable in any way is one message
        raise UserError(f"MLflow tracking server {mask(uri)} is unreachable: {first_line(err)}") from err


@contextlib.contextmanager
def run(name: str, run_id: str | None = None, nested: bool = False,
        tags: dict[str, str] | None = None, system_metrics: bool = False,
        parent_run_id: str | None = None) -> Iterator[Any]:
    """Start (or resume) an MLflow run and always end it.

    Ctrl-C / SIGTERM (``KeyboardInterrupt``) end it KILLED, any other exception FAILED with the
    error as a tag; only a SIGKILL can leave it RUNNING, and the next start of the cell resumes
    or closes it (``close_orphans``).
    """
    import mlflow

    active = retry_locked(mlflow.start_run)(run_id=run_id, run_name=None if run_id else name,
                                             nested=nested, tags=tags, parent_run_id=parent_run_id,
                                             log_system_metrics=system_metrics or None)
    try:
        yield active
    except KeyboardInterrupt as err:
        retry_locked(mlflow.set_tag)("stopped", f"{type(err).__name__}: {first_line(err)}"[:5000])
        retry_locked(mlflow.end_run)(status="KILLED")
        raise
    except BaseException as err:
        retry_locked(mlflow.set_tag)("error", first_line(err)[:5000])
        retry_locked(mlflow.end_run)(status="FAILED")
        raise
    retry_locked(mlflow.end_run)(status="FINISHED")


def run_exists(run_id: str, exp_id: str) -> bool:
    """Whether ``run_id`` is a live (not deleted) run of experiment ``exp_id`` in the current store."""
    import mlflow

    try:
        found = retry_locked(mlflow.MlflowClient().get_run)(run_id)
    except Exception:  # noqa: BLE001 - not in this store
        return False
    return found.info.experiment_id == exp_id and found.info.lifecycle_stage == "active"


def close_orphans(exp_id: str, match: dict[str, str], reason: str, keep: str | None = None) -> list[str]:
    """Mark KILLED, with ``reason`` as a tag, every RUNNING run whose tags equal ``match`` (but ``keep``).

    Such runs belong to a process that was SIGKILLed (no handler ran); called when the same cell
    starts again, so the MLflow UI never shows a dead run with a running clock.
    """
    import mlflow

    client = mlflow.MlflowClient()
    query = " and ".join([*(f"tags.{k} = '{v}'" for k, v in match.items()), "attributes.status = 'RUNNING'"])
    closed = []
    for found in retry_locked(client.search_runs)([exp_id], filter_string=query, max_results=1000):
        if found.info.run_id == keep:
            continue
        retry_locked(client.set_tag)(found.info.run_id, "stopped", reason[:5000])
        retry_locked(client.set_terminated)(found.info.run_id, "KILLED")
        closed.append(found.info.run_id)
        print(f"MLflow run {found.info.run_id} was left RUNNING; marked KILLED ({reason})")
    return closed


def log_features_input(root: Path, digest: str, meta: dict) -> None:
    """The features a run trained on, as an MLflow dataset input (the UI's Dataset column)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(root).resolve()))
    dataset = MetaDataset(source=source, name=f"features:{Path(root).as_posix()}", digest=digest)
    tags = {"dvc_path": Path(root).as_posix(), "params_hash": str(meta.get("params_hash", "")),
            "splits": ", ".join(f"{k} {v['n']}" for k, v in meta.get("splits", {}).items())}
    retry_locked(mlflow.log_input)(dataset, context="training", tags=tags)


def set_tags(tags: dict[str, str]) -> None:
    import mlflow

    retry_locked(mlflow.set_tags)(tags)


def logged_steps(run_id: str, key: str) -> set[int]:
    """The steps at which ``key`` was already logged to ``run_id`` (a resumed run skips them)."""
    import mlflow

    return {m.step for m in retry_locked(mlflow.MlflowClient().get_metric_history)(run_id, key)}


def log_text(text: str, artifact_file: str) -> None:
    import mlflow

    retry_locked(mlflow.log_text)(text, artifact_file)


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


# A run's MLflow metric names are "<section>/<name>": MLflow 3's chart view groups metrics by the
# prefix before the last "/" into collapsible sections (mlflow/mlflow#22966, #23212), so the learning
# curves, the scores, the model's size, the cost and the per-part diagnostics each get their own.
# metrics.json, history.csv and compare's tables keep the flat names; ``flat_metrics`` maps back.
METRIC_SECTIONS: dict[str, tuple[str, ...]] = {
    "curves": ("train_loss", "train_acc", "val_loss", "val_acc", "lr"),
    "scores": ("test_acc", "test_loss", "best_val_acc", "best_epoch", "test_macro_f1", "test_nll",
               "test_ece"),
    "model": ("trainable_params", "total_params", "trainable_share", "frozen_blocks"),
    "cost": ("wall_seconds", "checkpoint_bytes", "checkpoint_io_share"),
}
# Families of flat names with a per-part suffix: flat prefix -> MLflow prefix.
METRIC_FAMILIES: dict[str, str] = {"weight_change.": "diagnostics/weight_change/",
                                   "cka.": "diagnostics/cka/", "test_acc_": "scores/per_class/"}
_SECTION_OF = {name: section for section, names in METRIC_SECTIONS.items() for name in names}


def metric_name(flat: str) -> str:
    """The MLflow name of the flat metric ``flat`` (``val_acc`` -> ``curves/val_acc``,
    ``cka.block_03`` -> ``diagnostics/cka/block_03``); a name in no section is a bug, not a metric."""
    if flat in _SECTION_OF:
        return f"{_SECTION_OF[flat]}/{flat}"
    for prefix, path in METRIC_FAMILIES.items():
        if flat.startswith(prefix):
            return path + flat[len(prefix):]
    raise ValueError(f"metric {flat!r} has no section in tracking.METRIC_SECTIONS / METRIC_FAMILIES")


def flat_name(name: str) -> str:
    """``metric_name`` inverted; a flat name (a run logged before the sections) is returned as is."""
    for prefix, path in METRIC_FAMILIES.items():
        if name.startswith(path):
            return prefix + name[len(path):]
    section, _, rest = name.partition("/")
    return rest if section in METRIC_SECTIONS and rest in METRIC_SECTIONS[section] else name


def log_sectioned(metrics: dict[str, float], step: int | None = None) -> None:
    """``log_metrics`` under the sectioned names (``metric_name``) of the flat ``metrics``."""
    log_metrics({metric_name(k): v for k, v in metrics.items()}, step=step)


def flat_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A run's MLflow metrics by their flat names (``flat_name``)."""
    return {flat_name(k): v for k, v in metrics.items()}


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    retry_locked(mlflow.log_artifact)(str(path), artifact_path)


# The run's logged model (runs:/<run_id>/model) and where a dropped run's record goes (run artifacts).
MODEL_NAME = "model"
RECORD_DIR = "checkpoint"
CHECKPOINT_ARTIFACT = "checkpoint"  # the pyfunc's artifact key: artifacts/model.pt in the logged model
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # not imported here: MLflow runs it


def log_checkpoint(path: Path, sha256: str, images: Any, classes: int,
                   tags: dict[str, str] | None = None) -> str:
    """Log ``model.pt`` as the active run's logged model ``MODEL_NAME``; return its model id.

    ``images`` (stored feature images, (N, H, W), as the run read them) and ``classes`` give its
    signature: (-1, H, W) of their dtype in, (-1, classes) float32 probabilities out.

    A pyfunc (``pyfunc_model.py``, models from code) whose one artifact is the checkpoint, so the
    MLflow UI lists it (runs table's Models column, the run's model page) and
    ``mlflow.pyfunc.load_model(f"runs:/{run_id}/model")`` loads it through ``checkpoint.load_model``.
    Once per checkpoint: a resumed run that logged this file (same SHA-256) already logs nothing,
    and a stale model of the run (another file) is deleted. On a local artifact store the stored
    file becomes a hard link to ``path`` (``share_inode``): one inode for workspace, DVC cache and
    MLflow; elsewhere (a server, S3, another filesystem) it stays an uploaded copy.
    """
    signature = _signature(images, classes)
    # A retry (sqlite locked) first deletes the model the failed attempt left PENDING.
    return retry_locked(_log_checkpoint_once)(Path(path), sha256, signature, tags)


def _signature(images: Any, classes: int) -> Any:
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    shape = (-1, *tuple(images.shape[1:]))
    dtype = np.dtype(str(images.dtype).removeprefix("torch."))
    return ModelSignature(inputs=Schema([TensorSpec(dtype, shape)]),
                          outputs=Schema([TensorSpec(np.dtype("float32"), (-1, classes))]))


def _log_checkpoint_once(path: Path, sha256: str, signature: Any, tags: dict[str, str] | None) -> str:
    import mlflow
    from mlflow.entities import LoggedModelStatus

    client = mlflow.MlflowClient()
    run = mlflow.active_run()
    for old in _run_models(client, run.info.experiment_id, run.info.run_id):
        if old.tags.get("checkpoint_sha256") == sha256 and old.status == LoggedModelStatus.READY:
            return old.model_id
        client.delete_logged_model(old.model_id)  # stale, or cut off while logging
    # A progress bar and "no input example" per stage would bury its output (the signature is given).
    with _environ("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
        info = _log_pyfunc(path, sha256, signature, tags)
    stored = _local_path(client.get_logged_model(info.model_id).artifact_location)
    if stored is not None:
        share_inode(path, stored / "artifacts" / path.name)
    client.finalize_logged_model(info.model_id, LoggedModelStatus.READY)
    return info.model_id


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """Set an environment variable for the duration of a block."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _log_pyfunc(path: Path, sha256: str, signature: Any, tags: dict[str, str] | None) -> Any:
    import mlflow.utils.environment as environment

    # The requirements are this process's own versions, so MLflow's mismatch check cannot find one;
    # it scans every installed distribution first (1-3 s, once per stage process): skip it.
    skip = (mock.patch.object(environment, "warn_dependency_requirement_mismatches", lambda reqs: None)
            if hasattr(environment, "warn_dependency_requirement_mismatches") else contextlib.nullcontext())
    with skip:
        return _log_pyfunc_model(path, sha256, signature, tags)


def _log_pyfunc_model(path: Path, sha256: str, signature: Any, tags: dict[str, str] | None) -> Any:
    import mlflow
    import mlflow.pyfunc
    import torch
    import torchvision

    return mlflow.pyfunc.log_model(
        name=MODEL_NAME, python_model=str(PYFUNC_CODE), artifacts={CHECKPOINT_ARTIFACT: str(path)},
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                          f"torchvision=={torchvision.__version__.split('+')[0]}"],
        signature=signature, tags={"checkpoint_sha256": sha256, **(tags or {})})


def log_record(path: Path) -> None:
    """Log a dropped run's ``model.pt`` record as the run artifact ``RECORD_DIR/model.pt`` (no logged
    model: it holds no weights); on a local store the artifact is a hard link to ``path``."""
    import mlflow

    log_artifact(path, RECORD_DIR)
    stored = _local_path(mlflow.active_run().info.artifact_uri)
    if stored is not None:
        share_inode(Path(path), stored / RECORD_DIR / Path(path).name)


def _run_models(client: Any, exp_id: str, run_id: str) -> list[Any]:
    """The run's live logged models named ``MODEL_NAME``."""
    query = f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'"
    return list(retry_locked(client.search_logged_models)([exp_id], filter_string=query))


def _local_path(uri: str) -> Path | None:
    """The folder of a ``file:`` (or plain path) artifact location; None for any remote store."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(unquote(parsed.path))
    return Path(uri) if parsed.scheme == "" else None


def share_inode(source: Path, copy: Path) -> bool:
    """Make ``copy`` a hard link to ``source`` when both hold the same bytes; True if they now share one.

    The link replaces the copy atomically (a temporary sibling, then a rename). Both names are made
    read-only, as DVC protects its cache: the one inode is also the DVC cache's file once the stage
    is committed, so writing into it in place would change all three. Any failure (another
    filesystem, a filesystem without hard links, different bytes) keeps the copy.
    """
    try:
        if copy.stat().st_ino == source.stat().st_ino:
            return True
        if copy.stat().st_size != source.stat().st_size or file_sha256(copy) != file_sha256(source):
            return False
        tmp = copy.with_name(f".{copy.name}.link")
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, copy)
        os.chmod(source, 0o444)
        return True
    except OSError:
        return False


def fetch_runs(t: Tracking, run_ids: list[str]) -> dict[str, Any]:
    """Exactly these runs by id (never a search for the latest); missing ids map to None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(t.uri)
    found = {}
    for run_id in run_ids:
        try:
            found[run_id] = client.get_run(run_id)
        except MlflowException:
            found[run_id] = None
    return found

"""Lean checkpoints: what a run changed (trainable weights, their optimiser state), written rarely.

A frozen weight is the same in every run of a model (the pretrained file, or the seeded
initialisation), so a checkpoint does not store it: it stores the parameters that train, the
buffers that can change (running statistics of BatchNorm layers that are not frozen), and the
SHA-256 of everything else. Loading rebuilds the model from the registry (same weights, same
seed), checks that hash and applies the stored part. A linear-probe checkpoint is kilobytes.

The resumable state of a run is one object, ``TrainState`` (model, optimiser, schedule, batch-order
generator, history, best weights); ``Interval`` writes it as ``last.pt`` when ``checkpoint_seconds``
have passed since the last write (0: every epoch) and when SIGTERM asks the run to stop, and
``TrainState.resume`` continues from it when it was written for the same settings and base
weights. The best weights stay in memory and are written once, as ``model.pt``, when the run ends.
Bytes and seconds spent writing are counted (``IO``) so a run can report its checkpoint overhead.
The model a run starts from is built in one place, ``initial_model``: training and every loader
rebuild the same seeded weights, so the frozen-weights hash holds.

``keep.weights`` (``KEEP_WEIGHTS``) decides which runs keep their trained weights on disk.
A run that does not keep them still has a ``model.pt``: its config, the frozen weights' hash and
the SHA-256 and size of the weights file it wrote and then dropped (``drop_weights``), so a rerun
of the cell can be checked against it; loading it says so in one line.
"""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from .. import atomic
from ..errors import Terminated, UserError
from ..grid import LAST
from ..model import added, freezing
from ..model import registry as models

FORMAT = "lean-1"
# keep.weights: which runs keep their trained weights in model.pt (the others keep a record).
KEEP_WEIGHTS = ("all", "first_seed", "none")


def keeps_weights(policy: str, seed: int, seeds: list[int]) -> bool:
    """Whether a run of ``seed`` keeps its weights under ``policy`` (``first_seed``: ``seeds[0]``)."""
    if policy not in KEEP_WEIGHTS:
        raise ValueError(f"keep_weights must be one of {KEEP_WEIGHTS}, got {policy!r}")
    return policy == "all" or (policy == "first_seed" and seed == seeds[0])


class RunIdentity(Protocol):
    """What the checkpoint code reads of a run's settings (``core.RunConfig``, a dataclass)."""

    @property
    def torch_seed(self) -> int: ...

    def key(self) -> str: ...


@dataclass
class IO:
    """Checkpoint bytes written and seconds spent writing them, for one run."""

    bytes: int = 0
    seconds: float = 0.0
    writes: int = 0


def changed_keys(model: nn.Module) -> set[str]:
    """State-dict keys a run can change: trainable parameters and non-frozen buffers."""
    keys = {name for name, p in model.named_parameters() if p.requires_grad}
    for module_name, module in model.named_modules():
        if isinstance(module, FrozenBatchNorm2d):
            continue
        for buffer_name, _ in module.named_buffers(recurse=False):
            keys.add(f"{module_name}.{buffer_name}" if module_name else buffer_name)
    return keys


def frozen_hash(model: nn.Module, changed: Iterable[str]) -> str:
    """SHA-256 of every state-dict entry a run cannot change (names, dtypes, shapes and bytes)."""
    changed = set(changed)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in changed:
            continue
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def lean_state(model: nn.Module, changed: set[str]) -> dict[str, torch.Tensor]:
    """A CPU copy of the changed part of ``model``'s state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in changed}


def save(obj: dict, path: Path, io: IO) -> None:
    """``torch.save`` through a temporary sibling (crash-safe), counting bytes and seconds."""
    start = time.perf_counter()
    with atomic.atomic_path(path) as tmp:
        torch.save(obj, tmp)
        size = Path(tmp).stat().st_size
    io.bytes += size
    io.writes += 1
    io.seconds += time.perf_counter() - start


def save_model(path: Path, weights: dict[str, torch.Tensor], config: object, frozen: str, io: IO) -> None:
    """``model.pt``: the best weights' changed part, the run config, the frozen weights' hash and
    the torch seed the run was built with (``core.run_seed``)."""
    save({"format": FORMAT, "weights": weights, "frozen_sha256": frozen, "config": asdict(config),
          "torch_seed": config.torch_seed}, path, io)


def drop_weights(path: Path, sha256: str, policy: str) -> None:
    """Replace ``model.pt`` by its record without the weights (atomically): config, frozen hash,
    and the SHA-256 and size of the file it replaces."""
    state = read_model(path)
    record = {"format": FORMAT, "weights": None, "frozen_sha256": state["frozen_sha256"],
              "config": state["config"], "torch_seed": torch_seed(state),
              "dropped": {"sha256": sha256, "bytes": path.stat().st_size, "keep_weights": policy}}
    with atomic.atomic_path(path) as tmp:
        torch.save(record, tmp)


def apply(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load a lean state into a freshly built model; every stored key must exist in it."""
    missing = set(weights) - set(model.state_dict())
    if missing:
        raise UserError(f"checkpoint holds weights the model does not have, e.g. {sorted(missing)[0]}")
    model.load_state_dict(weights, strict=False)


def load_model(path: str | Path, weights_path: str | None = None) -> nn.Module:
    """Rebuild the trained model of a ``model.pt``: registry weights + the stored changed part
    (a parameter-efficient family's added parameters and head; LoRA merged into the weights).

    The frozen part is rebuilt as training built it (the pretrained file, or the seeded random
    initialisation) and checked against the stored hash, so a checkpoint is never applied to
    other base weights.
    """
    state = read_model(path)
    if state["weights"] is None:
        dropped = state["dropped"]
        raise UserError(f"{path} holds no weights: keep.weights = {dropped['keep_weights']!r} "
                        f"dropped them after the run (that file had SHA-256 {dropped['sha256'][:16]}…); "
                        "rerun the cell with keep.weights: all to rebuild it")
    model = base_model(state, path, weights_path)
    apply(model, state["weights"])
    added.merge(model)  # LoRA folded into plain weights: torchvision's names, no parametrization
    return model


def read_model(path: str | Path) -> dict:
    """The stored dict of a ``model.pt``: ``weights`` (the changed part), ``config``, ``frozen_sha256``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT:
        raise UserError(f"{path} is not a {FORMAT} checkpoint of this project")
    return state


def initial_model(config: Mapping[str, Any], seed: int, weights_path: str | None = None
                  ) -> tuple[nn.Module, int, int]:
    """The model a run starts from, and its (trainable, total) parameter counts: the registry's
    build of ``config["model"]`` under ``torch.manual_seed(seed)`` (the pretrained file, or the
    seeded random initialisation) with the freeze mode applied (``added.apply``: a
    parameter-efficient family's added modules are initialised from the same seed), on the CPU.

    ``config`` holds ``core.RunConfig``'s fields (``asdict``, or a checkpoint's stored ``config``);
    ``weights_path`` overrides its own. Training (``core.setup``) and loading (``base_model``) both
    build through here, so a checkpoint's frozen-weights hash matches the model it is applied to.
    """
    torch.manual_seed(seed)
    model = models.build(config["model"], config["num_classes"], config["image_size"], config["weights"],
                         weights_path or config["weights_path"])
    plan = freezing.plan(config["model"], config["freeze"])
    trainable, total = added.apply(model, plan, config["model"],
                                      freeze_bn_stats=config["frozen_bn"] == "eval")
    return model, trainable, total


def base_model(state: dict, path: str | Path, weights_path: str | None = None) -> nn.Module:
    """The model a ``model.pt`` run started from (``initial_model``), checked against the stored
    frozen-weights hash (``load_model`` without the trained part)."""
    cfg = state["config"]
    model, _, _ = initial_model(cfg, torch_seed(state), weights_path)
    if frozen_hash(model, changed_keys(model)) != state["frozen_sha256"]:
        raise UserError(f"{path} was trained on other base weights than {cfg['model']} has here "
                        f"(weights: {cfg['weights']}); its frozen-weights hash does not match")
    return model


def load_from_mlflow(run_id: str, tracking_uri: str | None = None, dst: str | Path | None = None,
                     weights_path: str | None = None) -> nn.Module:
    """The trained model of MLflow run ``run_id`` from its logged model, without the DVC workspace.

    Downloads the ``model.pt`` of the run's logged model ``model`` (``tracking.log_checkpoint``) into
    ``dst`` (a new temporary folder by default) through the MLflow client and loads it with
    ``load_model``, so the frozen-weights hash is checked. A run whose weights were dropped
    (``keep.weights``) has no logged model: its record says so in one line.
    """
    import tempfile

    import mlflow

    from .tracking import MODEL_NAME, RECORD_DIR

    client = mlflow.MlflowClient(tracking_uri)
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException as err:
        raise UserError(f"MLflow run {run_id} is not in the tracking store {client.tracking_uri}") from err
    folder = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="tfreeze-model-"))
    query = f"source_run_id = '{run_id}' AND name = '{MODEL_NAME}'"
    found = client.search_logged_models([run.info.experiment_id], filter_string=query, max_results=1)
    if found:
        # the logged model's own location ("models:/<id>" would resolve against the default store)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{found[0].artifact_location.rstrip('/')}/artifacts/model.pt",
            dst_path=str(folder), tracking_uri=client.tracking_uri)
        return load_model(local, weights_path)
    if any(a.path == f"{RECORD_DIR}/model.pt" for a in client.list_artifacts(run_id, RECORD_DIR)):
        local = client.download_artifacts(run_id, f"{RECORD_DIR}/model.pt", str(folder))
        return load_model(local, weights_path)  # a record: one line saying the weights were dropped
    raise UserError(f"MLflow run {run_id} has no logged model {MODEL_NAME!r} (a sweep trial, or a run "
                    "from before checkpoints were logged): load its model.pt from the DVC workspace")


def torch_seed(state: dict) -> int:
    """The seed a ``model.pt`` run was built with: its recorded ``torch_seed``; a checkpoint written
    before seeds were derived per fold cell has none and was seeded by ``grid.seeds`` alone."""
    return int(state["torch_seed"]) if "torch_seed" in state else int(state["config"]["seed"])


# --- the resumable state: last.pt --------------------------------------------------------------

@dataclass
class TrainState:
    """Everything a run needs to continue after its last finished epoch; ``save`` writes ``last.pt``.

    The live objects the loop trains (model, optimiser, lr schedule, batch-order generator), what
    the checkpoint stores of them (``changed``: the state-dict keys a run can change; ``frozen``:
    the hash of the rest), and the run's record: ``epoch`` (the last finished one, 0-based; -1
    before the first), ``history`` (one metrics row per epoch), ``best`` (validation accuracy and
    epoch of the best weights so far) and ``best_weights`` (their changed part, CPU copies).
    ``started`` is the ``perf_counter`` the run would have started at had it never stopped: a
    resume moves it back by the seconds already spent. Under LP-FT each phase brings its own
    optimiser and schedule (``start_phase``); ``pending`` holds a resumed optimiser and schedule
    state until the phase it belongs to starts.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    shuffle: torch.Generator
    changed: set[str]
    frozen: str
    started: float
    epoch: int = -1
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"acc": -1.0, "epoch": -1})
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)
    pending: dict | None = None

    def record(self, epoch: int, row: dict) -> None:
        """Close epoch ``epoch``: its metrics ``row``, and the weights if ``val_acc`` improved."""
        self.epoch = epoch
        self.history.append(row)
        if row["val_acc"] > self.best["acc"]:
            self.best = {"acc": row["val_acc"], "epoch": epoch}
            self.best_weights = lean_state(self.model, self.changed)

    def save(self, path: Path, cfg: RunIdentity, extra: dict | None, io: IO) -> None:
        """Write the state to ``path`` (``last.pt``); ``extra`` is kept for the caller (``peek``)."""
        state = {"format": FORMAT, "key": cfg.key(), "config": asdict(cfg), "epoch": self.epoch,
                 "model": lean_state(self.model, self.changed), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                 "shuffle_rng": self.shuffle.get_state(), "torch_rng": torch.get_rng_state(),
                 "best": self.best, "best_model": self.best_weights, "frozen_sha256": self.frozen,
                 "history": self.history, "elapsed": time.perf_counter() - self.started,
                 "extra": extra or {}}
        save(state, path, io)

    def resume(self, workdir: Path, cfg: RunIdentity) -> bool:
        """Continue from ``workdir/last.pt`` if it was written for ``cfg`` and these base weights
        (``resumable``): the weights, optimiser, schedule, both generators and the record. Without
        an optimiser yet (phases), its state and the schedule's wait in ``pending``. False, and
        nothing changed, when there is none to continue."""
        saved = resumable(workdir, cfg, frozen=self.frozen)
        if saved is None:
            return False
        apply(self.model, saved["model"])
        self.pending = {"optimizer": saved["optimizer"], "scheduler": saved["scheduler"]}
        if self.optimizer is not None:
            self.start_phase(self.optimizer, self.scheduler, resumes=True)
        self.shuffle.set_state(saved["shuffle_rng"])
        torch.set_rng_state(saved["torch_rng"])
        self.epoch, self.best, self.history = saved["epoch"], saved["best"], saved["history"]
        self.best_weights = saved["best_model"]
        self.started -= saved["elapsed"]
        return True


    def start_phase(self, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, resumes: bool) -> None:
        """Train on with ``optimizer`` and ``scheduler``; ``resumes``: they continue the ``pending``
        state of a resumed run (stopped inside this phase), else they start fresh (a new phase)."""
        self.optimizer, self.scheduler = optimizer, scheduler
        if resumes and self.pending is not None:
            optimizer.load_state_dict(self.pending["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(self.pending["scheduler"])
        self.pending = None


class Interval:
    """When ``TrainState`` is written: after an epoch once ``seconds`` have passed since the last
    write (0: every epoch), and at the end of the epoch in which SIGTERM arrived, after which the
    run stops with ``Terminated``. A context manager around the epoch loop: only inside it does
    SIGTERM wait for the epoch's end (outside a main thread signals are left to their owner)."""

    def __init__(self, path: Path, cfg: RunIdentity, seconds: float, extra: dict | None, io: IO):
        self.path, self.cfg, self.seconds, self.extra, self.io = path, cfg, seconds, extra, io
        self.stop_requested = False
        self._previous = None
        self._installed = False
        self._last_write = time.monotonic()

    def __enter__(self) -> Interval:
        self._last_write = time.monotonic()
        try:
            self._previous = signal.signal(signal.SIGTERM, self._request_stop)
            self._installed = True
        except ValueError:  # not the main thread
            pass
        return self

    def _request_stop(self, signum, frame) -> None:
        self.stop_requested = True
        print("SIGTERM: finishing this epoch, then writing the resumable state", flush=True)

    def epoch_done(self, state: TrainState, epochs: int) -> None:
        """Write ``state`` if it is due; stop the run here if SIGTERM asked and epochs remain."""
        if self.seconds <= 0 or time.monotonic() - self._last_write >= self.seconds or self.stop_requested:
            state.save(self.path, self.cfg, self.extra, self.io)
            self._last_write = time.monotonic()
        if self.stop_requested and state.epoch + 1 < epochs:
            raise Terminated(f"SIGTERM: stopped after epoch {state.epoch + 1}, resumable state written")

    def __exit__(self, *exc: object) -> None:
        if not self._installed:
            return
        signal.signal(signal.SIGTERM, self._previous)
        if self.stop_requested:
            raise Terminated("SIGTERM")


def resumable(workdir: Path, cfg: RunIdentity, quiet: bool = False, frozen: str | None = None) -> dict | None:
    """The resumable state in ``workdir`` if it was written for ``cfg`` (and, given ``frozen``, for
    those base weights), else None (and why, unless ``quiet``)."""
    path = workdir / LAST
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a torn or foreign file is not a resume point
        if not quiet:
            print(f"ignoring {path}: unreadable ({type(err).__name__}); training from epoch 1")
        return None
    if state.get("key") != cfg.key() or state.get("format") != FORMAT:
        if not quiet:
            print(f"ignoring {path}: written by a run with other settings ({differences(state, cfg)}); "
                  "training from epoch 1")
        return None
    if frozen is not None and state.get("frozen_sha256") != frozen:
        if not quiet:
            print(f"ignoring {path}: written for other base weights (frozen-weights hash differs); "
                  "training from epoch 1")
        return None
    return state


def differences(state: dict, cfg: RunIdentity) -> str:
    """Which run settings differ between a checkpoint and ``cfg``, e.g. ``lr 0.01 -> 0.02``."""
    old = state.get("config")
    if not isinstance(old, dict):
        return "a checkpoint from an older version of this code"
    new = asdict(cfg)
    changed = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k]]
    changed += [f"{k} {old[k]!r} -> (none)" for k in old if k not in new]
    return ", ".join(changed) or "a checkpoint from an older version of this code"


def checkpoint_epoch(path: Path) -> int | None:
    """The last finished epoch (0-based) a resumable state holds, None if it cannot be read."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001
        return None


def peek(workdir: Path, cfg: RunIdentity) -> dict:
    """The ``extra`` (``resume_extra`` of ``core.fit``) of a checkpoint ``cfg`` can resume ({} if none)."""
    state = resumable(workdir, cfg, quiet=True)
    return state["extra"] if state else {}


def stale(workdir: Path, cfg: RunIdentity) -> tuple[dict, str] | None:
    """``(extra, why)`` of a checkpoint in ``workdir`` that ``cfg`` cannot resume, else None."""
    path = workdir / LAST
    if not path.is_file() or resumable(workdir, cfg, quiet=True):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        return {}, "its checkpoint is unreadable"
    return state.get("extra", {}), f"its settings changed ({differences(state, cfg)})"


def finish(workdir: Path) -> None:
    """Drop the resumable state once the run's outputs are written."""
    (workdir / LAST).unlink(missing_ok=True)

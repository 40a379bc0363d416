"""Lean checkpoints: what a run changed (trainable weights, their optimiser state), written rarely.

A frozen weight is the same in every run of a model (the pretrained file, or the seeded
initialisation), so a checkpoint does not store it: it stores the parameters that train, the
buffers that can change (running statistics of BatchNorm layers that are not frozen), and the
SHA-256 of everything else. Loading rebuilds the model from the registry (same weights, same
seed), checks that hash and applies the stored part. A linear-probe checkpoint is kilobytes.

The resumable state (``last.pt``) is written when ``checkpoint_seconds`` have passed since the
last write (0: every epoch) and when SIGTERM asks the run to stop; the best weights stay in memory
and are written once, as ``model.pt``, when the run ends. Bytes and seconds spent writing are
counted (``IO``) so a run can report its checkpoint overhead.

``keep.weights`` (``KEEP_WEIGHTS``) decides which runs keep their trained weights on disk.
A run that does not keep them still has a ``model.pt``: its config, the frozen weights' hash and
the SHA-256 and size of the weights file it wrote and then dropped (``drop_weights``), so a rerun
of the cell can be checked against it; loading it says so in one line.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from .. import atomic
from ..errors import UserError

FORMAT = "lean-1"
# keep.weights: which runs keep their trained weights in model.pt (the others keep a record).
KEEP_WEIGHTS = ("all", "first_seed", "none")


def keeps_weights(policy: str, seed: int, seeds: list[int]) -> bool:
    """Whether a run of ``seed`` keeps its weights under ``policy`` (``first_seed``: ``seeds[0]``)."""
    if policy not in KEEP_WEIGHTS:
        raise ValueError(f"keep_weights must be one of {KEEP_WEIGHTS}, got {policy!r}")
    return policy == "all" or (policy == "first_seed" and seed == seeds[0])


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
    """Rebuild the trained model of a ``model.pt``: registry weights + the stored changed part.

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
    return model


def read_model(path: str | Path) -> dict:
    """The stored dict of a ``model.pt``: ``weights`` (the changed part), ``config``, ``frozen_sha256``."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format") != FORMAT:
        raise UserError(f"{path} is not a {FORMAT} checkpoint of this project")
    return state


def base_model(state: dict, path: str | Path, weights_path: str | None = None) -> nn.Module:
    """The model a ``model.pt`` run started from: the seeded build with its weights and freeze mode,
    checked against the stored frozen-weights hash (``load_model`` without the trained part)."""
    from ..model import freezing
    from ..model import registry as models

    cfg = state["config"]
    torch.manual_seed(torch_seed(state))
    model = models.build(cfg["model"], cfg["num_classes"], cfg["image_size"], cfg["weights"],
                         weights_path or cfg["weights_path"])
    plan = freezing.plan(cfg["model"], cfg["freeze"])
    freezing.freeze(model, plan.prefixes, freeze_bn_stats=cfg["frozen_bn"] == "eval")
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

"""The training core: one (model, freeze mode, seed) run, resumable, with no tracking dependency.

Read it top to bottom like nanoGPT's train.py: setup, epoch loop (train, validate, checkpoint),
then the best-validation weights scored once on test. MLflow lives in ``tracking``; this module
only calls ``on_epoch`` so it runs (and benchmarks) with nothing but torch installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from . import atomic, freezing, models
from .features import Split, to_model_input

LAST = "last.pt"  # the resumable last-epoch state, removed once the run has finished


@dataclass(frozen=True)
class RunConfig:
    """Every setting that decides one run's numbers."""

    model: str
    freeze: str
    seed: int
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    frozen_bn: str = "eval"
    weights: str = "none"
    weights_path: str | None = None
    image_size: int = 224
    num_classes: int = 10
    device: str = "auto"

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Data:
    train: Split
    val: Split
    test: Split


@dataclass
class Result:
    test_acc: float
    test_loss: float
    best_val_acc: float
    best_epoch: int
    trainable_params: int
    total_params: int
    wall_seconds: float
    history: list[dict] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / self.total_params


EpochHook = Callable[[int, dict], None]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def setup(cfg: RunConfig, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer, int, int]:
    """Seeded model with the freeze mode applied, and SGD over what stays trainable."""
    torch.manual_seed(cfg.seed)
    model = models.build(cfg.model, cfg.num_classes, cfg.image_size, cfg.weights, cfg.weights_path)
    plan = freezing.plan(cfg.model, cfg.freeze)
    trainable, total = freezing.freeze(model, plan.prefixes, freeze_bn_stats=cfg.frozen_bn == "eval")
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          foreach=device.type == "cuda")
    return model, opt, trainable, total


def run_epoch(model: nn.Module, split: Split, batch_size: int, device: torch.device,
              opt: torch.optim.Optimizer | None = None, order: torch.Tensor | None = None,
              desc: str = "") -> tuple[float, float, torch.Tensor]:
    """One pass over ``split``: trains when ``opt`` is given. Returns (loss, acc %, predictions)."""
    training = opt is not None
    model.train(training)
    order = order if order is not None else torch.arange(len(split))
    preds = torch.empty(len(split), dtype=torch.long)
    loss_sum, correct = 0.0, 0
    bar = tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=None)
    for start in bar:
        idx = order[start:start + batch_size]
        x = to_model_input(split.images[idx].to(device, non_blocking=True))
        y = split.labels[idx].to(device)
        with torch.set_grad_enabled(training), _autocast(device):
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
        if training:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        pred = logits.argmax(1)
        preds[idx] = pred.cpu()
        loss_sum += loss.item() * len(idx)
        correct += (pred == y).sum().item()
        bar.set_postfix(loss=f"{loss_sum / (start + len(idx)):.3f}",
                        acc=f"{100 * correct / (start + len(idx)):.1f}")
    return loss_sum / len(split), 100.0 * correct / len(split), preds


def _autocast(device: torch.device):
    # bf16 autocast pays off on GPUs; on AVX2 CPUs bf16 is ~10x slower than fp32, so CPU stays fp32.
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fit(cfg: RunConfig, data: Data, workdir: Path, on_epoch: EpochHook | None = None,
        resume_extra: dict | None = None) -> Result:
    """Train ``cfg`` on ``data``, resuming from ``workdir/last.pt`` if a matching one exists.

    Writes ``workdir/model.pt`` (best-validation weights). ``resume_extra`` is stored in every
    checkpoint (the tracking layer keeps its run id there) and read back by ``peek``.
    """
    t0 = time.perf_counter()
    device = pick_device(cfg.device)
    _deterministic(device)
    model, opt, trainable, total = setup(cfg, device)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    state = _resume(workdir, cfg)
    start, best = 0, {"acc": -1.0, "epoch": -1}
    history: list[dict] = []
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        start, best, history = state["epoch"] + 1, state["best"], state["history"]
        t0 -= state["elapsed"]
        print(f"resuming {cfg.model}/{cfg.freeze}/seed{cfg.seed} after epoch {start}")
    for epoch in range(start, cfg.epochs):
        order = torch.randperm(len(data.train), generator=shuffle)
        tr_loss, tr_acc, _ = run_epoch(model, data.train, cfg.batch_size, device, opt, order,
                                       desc=f"epoch {epoch + 1}/{cfg.epochs} train")
        va_loss, va_acc, _ = run_epoch(model, data.val, cfg.batch_size, device, desc="val")
        row = {"train_loss": tr_loss, "train_acc": tr_acc, "val_loss": va_loss, "val_acc": va_acc}
        history.append(row)
        print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {tr_loss:.4f} acc {tr_acc:.1f}  "
              f"val loss {va_loss:.4f} acc {va_acc:.1f}")
        if va_acc > best["acc"]:
            best = {"acc": va_acc, "epoch": epoch}
            save_weights(model, workdir / "model.pt", cfg)
        if on_epoch:
            on_epoch(epoch, row)
        _save_last(workdir, cfg, model, opt, shuffle, epoch, best, history,
                   time.perf_counter() - t0, resume_extra)
        _crash_for_tests(epoch)
    model.load_state_dict(load_weights(workdir / "model.pt")["model"])
    te_loss, te_acc, preds = run_epoch(model, data.test, cfg.batch_size, device, desc="test")
    confusion = _confusion(data.test.labels, preds, cfg.num_classes)
    return Result(te_acc, te_loss, best["acc"], best["epoch"], trainable, total,
                  time.perf_counter() - t0, history, confusion)


def _deterministic(device: torch.device) -> None:
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def _confusion(labels: torch.Tensor, preds: torch.Tensor, n: int) -> list[list[int]]:
    flat = torch.bincount(labels * n + preds, minlength=n * n)
    return flat.view(n, n).tolist()


def save_weights(model: nn.Module, path: Path, cfg: RunConfig) -> None:
    with atomic.atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "config": asdict(cfg)}, tmp)


def load_weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _save_last(workdir: Path, cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer,
               shuffle: torch.Generator, epoch: int, best: dict, history: list[dict],
               elapsed: float, extra: dict | None) -> None:
    state = {"key": cfg.key(), "epoch": epoch, "model": model.state_dict(),
             "optimizer": opt.state_dict(), "shuffle_rng": shuffle.get_state(),
             "torch_rng": torch.get_rng_state(), "best": best, "history": history,
             "elapsed": elapsed, "extra": extra or {}}
    with atomic.atomic_path(workdir / LAST) as tmp:
        torch.save(state, tmp)


def _resume(workdir: Path, cfg: RunConfig) -> dict | None:
    path = workdir / LAST
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("key") != cfg.key() or not (workdir / "model.pt").is_file():
        print(f"ignoring {path}: written by a run with other settings")
        return None
    return state


def peek(workdir: Path, cfg: RunConfig) -> dict:
    """The ``resume_extra`` of a resumable checkpoint for ``cfg`` in ``workdir`` ({} if none)."""
    state = _resume(workdir, cfg)
    return state["extra"] if state else {}


def finish(workdir: Path) -> None:
    """Drop the resumable state once the run's outputs are written."""
    (workdir / LAST).unlink(missing_ok=True)


def _crash_for_tests(epoch: int) -> None:
    # Fault injection for the kill-and-resume tests: SIGKILL right after an epoch's checkpoint.
    if os.environ.get("TFREEZE_KILL_AFTER_EPOCH") == str(epoch):
        os.kill(os.getpid(), signal.SIGKILL)

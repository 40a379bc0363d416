"""The ``pretrain`` stage: pretrained weights for the offline demo models, from a source task that
is not the target (``data.fractals``: FractalDB-style formula-driven images, no natural images and
no audio).

Each model of ``pretrain.models`` is trained from its seeded random initialisation to classify
``pretrain.classes`` fractal classes at ``features.image_size`` (the size the train stages use, so
the position embeddings fit), through the same input normalisation as the target task
(``data.inputs.to_model_input``). The state dict goes to ``<pretrain.out>/<model>.pt``, which
``train.weights: <pretrain.out>/{model}.pt`` loads (the head is replaced there), and
``<pretrain.out>/pretrain.json`` records the source task's held-out accuracy per model.
Deterministic on CPU for a seed; kept self-contained (not ``train.core``) so that editing the
target's training loop does not re-run pretraining.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import atomic
from ..data import fractals
from ..data.inputs import to_model_input
from ..model import registry as models

HOLD_OUT_EVERY = 8  # every 8th instance of a class is held out to measure the source task


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def source_task(cfg: dict[str, Any], size: int) -> dict[str, torch.Tensor]:
    """The fractal images and labels, split into train and held-out parts."""
    images, labels = fractals.dataset(cfg["classes"], cfg["images_per_class"], size, cfg["points"],
                                      cfg["seed"])
    held = (np.arange(len(labels)) % cfg["images_per_class"]) % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    return {"x": x[~held], "y": y[~held], "x_val": x[held], "y_val": y[held]}


def pretrain_one(name: str, cfg: dict[str, Any], size: int, data: dict[str, torch.Tensor],
                 device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train ``name`` on the source task; returns its state dict (CPU) and source-task metrics."""
    torch.manual_seed(cfg["seed"])
    model = models.build(name, cfg["classes"], size).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    order = torch.Generator().manual_seed(cfg["seed"])
    x, y = data["x"], data["y"]
    steps = cfg["epochs"] * -(-len(y) // cfg["batch_size"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=steps, pct_start=0.1)
    start = time.perf_counter()
    model.train()
    for _ in range(cfg["epochs"]):
        perm = torch.randperm(len(y), generator=order)
        for i in range(0, len(y), cfg["batch_size"]):
            idx = perm[i:i + cfg["batch_size"]]
            loss = F.cross_entropy(model(to_model_input(x[idx].to(device))), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(to_model_input(data["x_val"][i:i + 256].to(device))).argmax(1).cpu()
                          for i in range(0, len(data["y_val"]), 256)])
    metrics = {"source_val_acc": round(100.0 * float((pred == data["y_val"]).float().mean()), 2),
               "chance_acc": round(100.0 / cfg["classes"], 2),
               "final_train_loss": round(float(loss.detach()), 4),
               "seconds": round(time.perf_counter() - start, 1)}
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, metrics


def run(p: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Pretrain every model of ``pretrain.models``; write their state dicts and ``pretrain.json``."""
    cfg, size = p["pretrain"], p["features"]["image_size"]
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    device = _device(p["runtime"]["device"])
    torch.use_deterministic_algorithms(True, warn_only=True)
    data = source_task(cfg, size) if cfg["models"] else {}
    report: dict[str, dict[str, float]] = {}
    for name in cfg["models"]:
        state, metrics = pretrain_one(name, cfg, size, data, device)
        with atomic.atomic_path(out / f"{name}.pt") as tmp:
            torch.save(state, tmp)
        report[name] = metrics
        print(f"pretrained {name} on {cfg['classes']} fractal classes: source held-out acc "
              f"{metrics['source_val_acc']} % (chance {metrics['chance_acc']} %), {metrics['seconds']} s")
    for stale in out.glob("*.pt"):  # models no longer listed
        if stale.stem not in report:
            stale.unlink()
    atomic.write_json(out / "pretrain.json", {name: {k: v for k, v in m.items() if k != "seconds"}
                                              for name, m in report.items()})
    return report

"""Seconds a train stage spends logging its checkpoint to MLflow, per demo mode (``log_checkpoint``).

    python benchmarks/checkpoint_logging.py            # params.yaml's models and freeze modes

For each mode: the seeded model is built and frozen as a run builds it, its lean ``model.pt`` is
written, and inside an MLflow run of a scratch sqlite store ``tracking.log_checkpoint`` logs it (the
pyfunc logged model, then the hard link). The first call also pays ``import mlflow.pyfunc``; each
mode is logged ``--repeats`` times into runs of its own and the median and first times reported.
This is what logging adds to a train stage: before it, a run logged only tags.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
from common import save

from transfer_freezing import config
from transfer_freezing.model import freezing
from transfer_freezing.model import registry as models
from transfer_freezing.train import checkpoint, tracking
from transfer_freezing.train.stage import run_config


def lean_checkpoint(p: dict, model: str, freeze: str, path: Path) -> str:
    """Write the seeded, frozen model's lean ``model.pt`` (as a run's best weights); return its SHA-256."""
    cfg = run_config(p, model, freeze, seed=1, lr=float(p["train"]["lr"]), num_classes=10)
    torch.manual_seed(cfg.seed)
    net = models.build(model, 10, cfg.image_size, cfg.weights, cfg.weights_path)
    freezing.freeze(net, freezing.plan(model, freeze).prefixes, freeze_bn_stats=cfg.frozen_bn == "eval")
    changed = checkpoint.changed_keys(net)
    checkpoint.save_model(path, checkpoint.lean_state(net, changed), cfg,
                          checkpoint.frozen_hash(net, changed), checkpoint.IO())
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    p = config.load(args.params)
    work = Path(tempfile.mkdtemp(prefix="tfreeze-ckptlog-"))
    t = tracking.Tracking(f"sqlite:///{work}/mlflow.db", work / "artifacts", "checkpoint-logging")
    tracking.connect(t)
    rows = []
    for model in p["grid"]["models"]:
        for freeze in p["grid"]["freeze_modes"]:
            path = work / "models" / model / freeze / "model.pt"
            path.parent.mkdir(parents=True)
            sha = lean_checkpoint(p, model, freeze, path)
            images = np.zeros((1, p["features"]["image_size"], p["features"]["image_size"]),
                              p["features"]["dtype"])
            seconds = []
            for _ in range(args.repeats):
                with mlflow.start_run():
                    start = time.perf_counter()
                    tracking.log_checkpoint(path, sha, images, 10)
                    seconds.append(time.perf_counter() - start)
            shared = path.stat().st_nlink - 1  # links made by the repeats' artifacts
            rows.append({"model": model, "freeze": freeze, "model_pt_bytes": path.stat().st_size,
                         "first_s": round(seconds[0], 3), "median_s": round(statistics.median(seconds), 3),
                         "mlflow_links": shared})
            print(f"{model}/{freeze}: model.pt {path.stat().st_size / 2**20:.2f} MiB, log_checkpoint "
                  f"first {seconds[0]:.2f} s, median {statistics.median(seconds):.2f} s, "
                  f"{shared} MLflow artifact(s) sharing its inode")
    result = {"params": args.params, "repeats": args.repeats, "modes": rows}
    save("checkpoint_logging", result)
    return result


if __name__ == "__main__":
    main()

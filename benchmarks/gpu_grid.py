"""The paper grid end to end through the commands users run, timed from the first cell to the table.

    python benchmarks/gpu_grid.py                        # paper scale (GPU): every route below
    python benchmarks/gpu_grid.py --scale smoke          # minutes on a CPU: the same routes, tiny
    python benchmarks/gpu_grid.py --routes one-process --seeds 1 8 16 24 32 40 48 56 64 72

A scratch project gets the paper profile (``profiles/paper.yaml``: ViT-B/16 at 224 px, 5 freeze
modes, 20 epochs, 800/100/100 clips) with two offline substitutions: a generated GTZAN-shaped
corpus (100 clips of 30 s per genre) instead of GTZAN, and random weights instead of ImageNet's
(neither changes a step's cost). ``tfreeze data`` and ``tfreeze features`` build the features
once; then each route trains the grid in its own fresh workspace with its own MLflow store
(sqlite, as the default profile) and ends with ``tfreeze compare``:

- ``per-cell``: one ``tfreeze train --model M --freeze F --seed S --fold 0`` process per cell, one
  after another: exactly the commands ``dvc repro`` runs (DVC's own bookkeeping is not counted);
- ``one-process``: ``tfreeze train`` with no cell arguments: the whole grid in one process, so the
  imports, CUDA start and data load are paid once;
- ``side-by-side``: ``--procs-per-mode`` ``tfreeze train --freeze F`` processes per freeze mode
  (default 1; each trains a share of the mode's seeds through ``--set grid.seeds=[...]``), all at
  once on the one device; ``tfreeze train --jobs N`` is the same placement through
  Ray, but Ray's wheel (79 MB) does not fit a device call's 64 MiB, so this route uses processes.

Printed per route: wall time from the first cell's start to ``freezing_comparison.md``, the sum of
the cells' own ``fit`` times (``metrics.json: wall_seconds``: model build, epochs, checkpoints,
test), the checkpoint share of that, and the rest (process start, imports, CUDA start, data load,
MLflow logging, compare) as overhead. ``--seeds`` runs a subset of the paper's 10 seeds; the
result then also states the wall time scaled to 10 seeds, labelled as a projection (only the
measured figure is measured). JSON goes to ``$OUT`` (default ``benchmarks/results``).

Needs this package's dependencies minus DVC, Optuna and Ray: torch, torchvision, torchaudio,
mlflow(-skinny), pandas, scipy, scikit-learn, matplotlib, soundfile, pyyaml (a GPU machine with
torch alone gets the rest as wheels: see the device README).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import save

REPO = Path(__file__).resolve().parents[1]
ROUTES = ("per-cell", "one-process", "side-by-side")
PAPER_SEEDS = [1, 8, 16, 24, 32, 40, 48, 56, 64, 72]

# What differs from profiles/paper.yaml at each scale (dotted keys).
SCALES: dict[str, dict[str, object]] = {
    "paper": {"data.source": "synthetic", "data.path": None, "data.clip_seconds": 30.0,
              "data.synthetic_clips_per_class": 100, "train.weights": "none"},
    "smoke": {"data.source": "synthetic", "data.path": None, "data.clip_seconds": 3.0,
              "data.synthetic_clips_per_class": 10, "train.weights": "none", "grid.models": ["vit_demo"],
              "grid.freeze_modes": ["freeze_none", "freeze_patch_0_5", "freeze_patch_0_11"],
              "train.epochs": 2, "train.batch_size": 16, "features.image_size": 32, "features.n_fft": 512,
              "features.hop_length": 256, "features.n_mels": 32},
}


def scratch_params(scale: str, seeds: list[int], device: str, workers: int) -> dict:
    """The paper profile with the scale's substitutions, every path inside the scratch folder."""
    p = paper_profile()
    # The original's grid: fixed lr only (grid.tuned_models [] turns the sweep and the tuned-lr grid off;
    # with them on, compare would wait for tuned-lr cells no route trains).
    changes = {**SCALES[scale], "grid.seeds": seeds, "grid.folds": [0], "runtime.device": device,
               "grid.tuned_models": [],
               "runtime.feature_workers": workers, "tracking.uri": "sqlite:///mlruns/mlflow.db",
               "tracking.artifacts": "mlruns/artifacts", "tracking.experiment": f"gpu-grid-{scale}"}
    for key, value in changes.items():
        section, name = key.split(".")
        p[section][name] = value
    return p


def paper_profile() -> dict:
    """profiles/paper.yaml over the schema defaults: the full params tree (every section present)."""
    sys.path.insert(0, str(REPO / "src"))
    from transfer_freezing import config

    return config.load(REPO / "profiles" / "paper.yaml")


def tfreeze(*args: str) -> list[str]:
    return [sys.executable, "-m", "transfer_freezing.cli", *args]


def env() -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
         "PYTHONUNBUFFERED": "1"}
    for key in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "DVC_ROOT", "RAY_ADDRESS"):
        e.pop(key, None)
    return e


def check(cmd: list[str], cwd: Path, log: Path) -> float:
    """Run ``cmd`` in ``cwd`` (output appended to ``log``); its wall seconds, or exit with its tail."""
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd[2:])}\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env(), stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[2:])} failed (rc {proc.returncode}) in {cwd}:\n"
                 + log.read_text()[-3000:])
    return time.perf_counter() - t0


def workspace(base: Path, route: str, params: dict) -> Path:
    """A fresh project folder sharing the built corpus and features."""
    root = base / route
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for rel in ("data",):
        os.symlink(base / "build" / rel, root / rel)
    return root


def cells(p: dict) -> list[tuple[str, str, int]]:
    t = p["grid"]
    return [(m, f, s) for m in t["models"] for f in t["freeze_modes"] for s in t["seeds"]]


def run_route(route: str, root: Path, p: dict, procs_per_mode: int = 1) -> dict:
    log = root / "route.log"
    t0 = time.perf_counter()
    process_seconds: list[float] = []
    if route == "per-cell":
        for model, freeze, seed in cells(p):
            process_seconds.append(check(tfreeze("train", "--model", model, "--freeze", freeze,
                                                 "--seed", str(seed), "--fold", "0"), root, log))
    elif route == "one-process":
        process_seconds.append(check(tfreeze("train"), root, log))
    else:  # side-by-side: procs_per_mode processes per freeze mode (seeds split), all at once
        procs = []
        seeds = p["grid"]["seeds"]
        groups = [seeds[i::procs_per_mode] for i in range(min(procs_per_mode, len(seeds)))]
        for model in p["grid"]["models"]:
            for freeze in p["grid"]["freeze_modes"]:
                for i, group in enumerate(groups):
                    fh = open(root / f"{model}-{freeze}-{i}.log", "w")
                    only = ["--set", f"grid.seeds=[{','.join(map(str, group))}]"] if len(groups) > 1 else []
                    procs.append((fh, time.perf_counter(), subprocess.Popen(
                        tfreeze("train", "--model", model, "--freeze", freeze, *only), cwd=root, env=env(),
                        stdout=fh, stderr=subprocess.STDOUT)))
        for fh, started, proc in procs:
            rc = proc.wait()
            process_seconds.append(time.perf_counter() - started)
            fh.close()
            if rc != 0:
                tail = Path(fh.name).read_text()[-3000:]
                sys.exit(f"side-by-side: {proc.args[3:]} failed (rc {rc}):\n{tail}")
    trained = time.perf_counter() - t0
    compare_s = check(tfreeze("compare"), root, log)
    total = time.perf_counter() - t0
    if not (root / "reports" / "freezing_comparison.md").is_file():
        sys.exit(f"{route}: tfreeze compare wrote no reports/freezing_comparison.md")
    metrics = [json.loads(path.read_text()) for path in sorted((root / "models").rglob("metrics.json"))]
    if len(metrics) != len(cells(p)):
        sys.exit(f"{route}: {len(metrics)} metrics.json for {len(cells(p))} cells")
    fit = sum(m["wall_seconds"] for m in metrics)
    ckpt = sum(m["wall_seconds"] * m["checkpoint_io_share"] for m in metrics)
    row = {"route": route, "cells": len(metrics), "wall_seconds": round(total, 2),
           "train_seconds": round(trained, 2), "compare_seconds": round(compare_s, 2),
           "fit_seconds_sum": round(fit, 2), "checkpoint_seconds_sum": round(ckpt, 2),
           "checkpoint_share_of_fit": round(ckpt / fit, 4) if fit else None,
           "checkpoint_bytes_per_cell": round(sum(m["checkpoint_bytes"] for m in metrics) / len(metrics)),
           "processes": len(process_seconds), "process_seconds": [round(s, 2) for s in process_seconds],
           "disk_bytes": folder_bytes(root / "models") + folder_bytes(root / "mlruns")}
    if route != "side-by-side":  # sequential: what is not inside a fit is overhead
        row["overhead_seconds"] = round(trained - fit, 2)
        row["overhead_share"] = round((trained - fit) / trained, 4)
    return row


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="paper")
    ap.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    ap.add_argument("--seeds", nargs="+", type=int, help="a subset of seeds (default: the paper's 10)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--workers", type=int, default=0, help="runtime.feature_workers (0 = all cores)")
    ap.add_argument("--procs-per-mode", type=int, default=1,
                    help="side-by-side: processes per freeze mode, each training a share of the seeds")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args(argv)
    seeds = args.seeds or (PAPER_SEEDS if args.scale == "paper" else [1, 8])
    base = Path(tempfile.mkdtemp(prefix="tfreeze-gpu-grid-"))
    p = scratch_params(args.scale, seeds, args.device, args.workers)
    build = base / "build"
    build.mkdir()
    (build / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    log = base / "build.log"
    setup = {"data_seconds": round(check(tfreeze("data"), build, log), 2),
             "features_seconds": round(check(tfreeze("features"), build, log), 2)}
    print(f"scratch project {base}: corpus {setup['data_seconds']:.1f} s, "
          f"features {setup['features_seconds']:.1f} s")
    rows = []
    for route in args.routes:
        row = run_route(route, workspace(base, route, p), p, args.procs_per_mode)
        rows.append(row)
        full = len(PAPER_SEEDS) / len(seeds)
        if args.scale == "paper" and full != 1 and route != "side-by-side":
            row["projected_10_seed_seconds"] = round(row["wall_seconds"] * full, 1)
        print(f"{route:>12}: {row['cells']} cells, first cell -> table {row['wall_seconds']:.1f} s "
              f"({row['wall_seconds'] / 60:.2f} min); fits {row['fit_seconds_sum']:.1f} s, of which "
              f"checkpoints {100 * (row['checkpoint_share_of_fit'] or 0):.2f} %; "
              + (f"overhead {row['overhead_seconds']:.1f} s "
                 f"({100 * row['overhead_share']:.1f} % of training); " if "overhead_seconds" in row else "")
              + f"compare {row['compare_seconds']:.1f} s; {row['checkpoint_bytes_per_cell'] / 2**20:.2f} MiB "
              f"written per cell; disk {row['disk_bytes'] / 2**30:.2f} GiB"
              + (f"; x10 seeds (projection, not measured): {row['projected_10_seed_seconds'] / 60:.1f} min"
                 if "projected_10_seed_seconds" in row else ""))
    result = {"scale": args.scale, "seeds": seeds, "device": args.device,
              "procs_per_mode": args.procs_per_mode, **setup, "routes": rows,
              "targets": {"grid_minutes": 4, "per_cell_route_minutes": 15, "checkpoint_share": 0.05,
                          "disk_gib": 5}}
    save(f"gpu_grid-{args.scale}", result)
    if args.keep:
        print(f"kept {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()

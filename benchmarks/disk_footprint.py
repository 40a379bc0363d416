"""Disk footprint of the paper grid under ``dvc repro``: workspace + DVC cache + MLflow store.

    python benchmarks/disk_footprint.py                  # one seed of each paper mode, ViT-B/16
    python benchmarks/disk_footprint.py --seeds 1 8 --keep

A clean copy of this checkout (as ``benchmarks/pipeline.py`` makes it) gets the paper profile
(``profiles/paper.yaml``: ViT-B/16 at 224 px, its 5 freeze modes) with substitutions that change no
checkpoint's size: a generated corpus (10 clips of 3 s per genre) instead of GTZAN, random weights
instead of ImageNet's (same shapes), 1 epoch, no CKA clips, no sweep. ``dvc repro`` runs it with the
project's own DVC and MLflow settings. Then, measured on disk:

- each place's bytes: the workspace's ``models/``, DVC's cache, the MLflow store (``mlruns/``), and
  the three together with every file counted once (hard links share one inode, as ``du`` counts);
- each cell's ``model.pt`` and what else its folder holds;
- the same after ``dvc config cache.type copy && dvc checkout --relink`` (DVC's behaviour where
  neither reflinks nor the project's hard links are used): what one copy on disk saves.

The 10-seed grid's footprint is each mode's measured per-cell bytes times 10 seeds: a checkpoint's
size follows from its mode's trainable parameters alone (not the seed, data or epochs), so this is
arithmetic on measured sizes, and it is labelled as scaled. Target (the GPU-grid issue): <= 5 GB.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import save
from pipeline import clean_copy

REPO = Path(__file__).resolve().parents[1]
PAPER_SEEDS = 10
TARGET_BYTES = 5e9
PLACES = {"workspace models/": "models", "DVC cache": ".dvc/cache", "MLflow store": "mlruns"}
# What differs from profiles/paper.yaml: nothing that changes a checkpoint's size.
CHANGES = {"data.source": "synthetic", "data.path": None, "data.clip_seconds": 3.0,
           "data.synthetic_clips_per_class": 10, "train.weights": "none", "train.epochs": 1,
           "train.batch_size": 16, "train.diagnostics_clips": 0, "sweep.models": [],
           "features.workers": 0}


def footprint(folders: list[Path]) -> dict[str, int]:
    """Apparent bytes of the files under ``folders`` and their unique bytes (one count per inode)."""
    apparent, seen = 0, {}
    for folder in folders:
        for path in folder.rglob("*") if folder.is_dir() else []:
            if path.is_symlink() or not path.is_file():
                continue
            st = path.stat()
            apparent += st.st_size
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return {"apparent_bytes": apparent, "unique_bytes": sum(seen.values()), "files": len(seen)}


def measure(work: Path) -> dict:
    places = {name: footprint([work / rel]) for name, rel in PLACES.items()}
    together = footprint([work / rel for rel in PLACES.values()])
    return {"places": places, "together": together}


def cells(work: Path) -> list[dict]:
    rows = []
    for model_pt in sorted((work / "models").rglob("model.pt")):
        folder = model_pt.parent
        others = sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.name != "model.pt")
        rows.append({"cell": str(folder.relative_to(work / "models")), "mode": folder.parts[-4],
                     "model_pt_bytes": model_pt.stat().st_size, "other_bytes": others,
                     "last_pt_left": (folder / "last.pt").exists()})
    return rows


def run(cmd: list[str], cwd: Path, env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1], help="seeds to train (default: 1)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch project")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tfreeze-disk-"))
    clean_copy(work)
    p = yaml.safe_load((REPO / "profiles" / "paper.yaml").read_text())
    for key, value in {**CHANGES, "train.seeds": args.seeds}.items():
        section, name = key.split(".")
        p[section][name] = value
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(work / "src"),
           "DVC_NO_ANALYTICS": "1"}
    for key in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE", "DVC_ROOT", "RAY_ADDRESS"):
        env.pop(key, None)
    repro_s = run(["dvc", "repro"], work, env)
    cache_type = subprocess.run(["dvc", "config", "cache.type"], cwd=work, env=env, capture_output=True,
                                text=True).stdout.strip()
    now = measure(work)
    per_cell = cells(work)
    run(["dvc", "config", "--local", "cache.type", "copy"], work, env)
    run(["dvc", "checkout", "--relink", "--force"], work, env)
    copied = measure(work)
    modes = {}
    for row in per_cell:
        modes.setdefault(row["mode"], []).append(row["model_pt_bytes"] + row["other_bytes"])
    per_mode = {mode: max(sizes) for mode, sizes in modes.items()}
    scaled = {"one_copy_bytes": PAPER_SEEDS * sum(per_mode.values())}
    trained = len(per_cell)
    unique_per_cell = now["together"]["unique_bytes"] / trained
    copy_per_cell = copied["together"]["unique_bytes"] / trained
    scaled["now_bytes"] = round(unique_per_cell * PAPER_SEEDS * len(per_mode))
    scaled["dvc_copy_bytes"] = round(copy_per_cell * PAPER_SEEDS * len(per_mode))
    print(f"dvc repro of {trained} paper cells ({', '.join(per_mode)}; seeds {args.seeds}): {repro_s:.0f} s; "
          f"DVC cache.type = {cache_type or 'DVC default'}")
    for label, m in (("now", now), ("DVC cache as copies", copied)):
        parts = ", ".join(f"{name} {gb(v['apparent_bytes'])}" for name, v in m["places"].items())
        print(f"  {label:>19}: {parts}; on disk together {gb(m['together']['unique_bytes'])}")
    for mode, size in per_mode.items():
        print(f"  {mode:>18}: {size / 2**20:9.2f} MiB per cell (model.pt and the cell's other outputs)")
    print(f"10-seed paper grid, scaled from the measured per-cell bytes (not measured): now "
          f"{gb(scaled['now_bytes'])}, with DVC copies {gb(scaled['dvc_copy_bytes'])}; target "
          f"<= {gb(TARGET_BYTES)}: {'met' if scaled['now_bytes'] <= TARGET_BYTES else 'MISSED'}")
    result = {"seeds": args.seeds, "repro_seconds": round(repro_s, 1), "cache_type": cache_type,
              "now": now, "dvc_copy": copied, "cells": per_cell, "per_mode_cell_bytes": per_mode,
              "scaled_10_seeds": scaled, "target_bytes": TARGET_BYTES,
              "meets_target": scaled["now_bytes"] <= TARGET_BYTES}
    save("disk_footprint", result)
    if args.keep:
        print(f"project kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()

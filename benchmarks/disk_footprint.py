"""Disk footprint of the paper grid under ``dvc repro``: workspace + DVC cache + MLflow store.

    python benchmarks/disk_footprint.py                  # two seeds of each paper mode, ViT-B/16
    python benchmarks/disk_footprint.py --keep-weights all --seeds 1 --keep

A clean copy of this checkout (as ``benchmarks/pipeline.py`` makes it) gets the paper profile
(``profiles/paper.yaml``: ViT-B/16 at 224 px, its 5 freeze modes) with substitutions that change no
checkpoint's size: a generated corpus (10 clips of 3 s per genre) instead of GTZAN, random weights
instead of ImageNet's (same shapes), 1 epoch, no CKA clips, no sweep. ``dvc repro`` runs it with the
project's own DVC and MLflow settings. Then, measured on disk:

- each place's bytes: the workspace's ``models/``, DVC's cache, the MLflow store (``mlruns/``), and
  the three together with every file counted once (hard links share one inode, as ``du`` counts);
- each cell's ``model.pt``, what else its folder holds, and whether the MLflow store's copy of it
  (the run's logged model) is the same inode (a hard link);
- the same after ``dvc config cache.type copy && dvc checkout --relink`` (DVC's behaviour where
  neither reflinks nor the project's hard links are used): what one copy on disk saves.

``keep.weights`` is the paper profile's (``first_seed``: the first seed's runs keep their
weights, the others a record) unless ``--keep-weights`` says otherwise; the default seeds, the
paper's first two, measure one cell of each kind per mode. The 10-seed grid's footprint is then
each mode's measured bytes per kept cell times the paper seeds that keep weights, plus its bytes
per dropped cell times the others (the DVC cache and MLflow store scaled in proportion): a
checkpoint's size follows from its mode's trainable parameters alone (not the seed, data or
epochs), so this is arithmetic on measured sizes, and it is labelled as scaled. Target (the
GPU-grid issue): <= 5 GB.
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

from transfer_freezing import config
from transfer_freezing.train.checkpoint import KEEP_WEIGHTS, keeps_weights

REPO = Path(__file__).resolve().parents[1]
PAPER_SEEDS = [1, 8, 16, 24, 32, 40, 48, 56, 64, 72]  # profiles/paper.yaml's grid.seeds
TARGET_BYTES = 5e9
PLACES = {"workspace models/": "models", "DVC cache": ".dvc/cache", "MLflow store": "mlruns"}
# What differs from profiles/paper.yaml: nothing that changes a checkpoint's size.
CHANGES = {"data.source": "synthetic", "data.path": None, "data.clip_seconds": 3.0,
           "data.synthetic_clips_per_class": 10, "train.weights": "none", "train.epochs": 1,
           "train.batch_size": 16, "train.diagnostics_clips": 0, "grid.tuned_models": [],
           "runtime.feature_workers": 0}


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


def cells(work: Path, policy: str, seeds: list[int]) -> list[dict]:
    """Each cell's files; ``mlflow_links``: the MLflow store files that are its ``model.pt`` (same inode)."""
    inodes: dict[tuple[int, int], int] = {}
    for path in (work / "mlruns").rglob("model.pt"):
        key = (path.stat().st_dev, path.stat().st_ino)
        inodes[key] = inodes.get(key, 0) + 1
    rows = []
    for model_pt in sorted((work / "models").rglob("model.pt")):
        folder = model_pt.parent
        others = sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.name != "model.pt")
        seed = int(folder.parts[-2].removeprefix("seed"))
        rows.append({"cell": str(folder.relative_to(work / "models")), "mode": folder.parts[-4],
                     "seed": seed, "weights_kept": keeps_weights(policy, seed, seeds),
                     "model_pt_bytes": model_pt.stat().st_size, "other_bytes": others,
                     "last_pt_left": (folder / "last.pt").exists(),
                     "mlflow_links": inodes.get((model_pt.stat().st_dev, model_pt.stat().st_ino), 0)})
    return rows


def scale(per_cell: list[dict], policy: str) -> dict[str, dict[str, int]]:
    """Each mode's bytes over the 10 paper seeds under ``policy``, from the measured cells' bytes."""
    need = {keeps_weights(policy, s, PAPER_SEEDS) for s in PAPER_SEEDS}
    out = {}
    for mode in dict.fromkeys(r["mode"] for r in per_cell):
        sizes = {kept: max((r["model_pt_bytes"] + r["other_bytes"] for r in per_cell
                            if r["mode"] == mode and r["weights_kept"] == kept), default=None)
                 for kept in need}
        if None in sizes.values():
            sys.exit(f"--seeds must train a cell that keeps and one that drops its weights under "
                     f"keep.weights = {policy!r} (e.g. --seeds 1 8)")
        out[mode] = {"kept_cell_bytes": sizes.get(True, 0), "dropped_cell_bytes": sizes.get(False, 0),
                     "ten_seed_bytes": sum(sizes[keeps_weights(policy, s, PAPER_SEEDS)] for s in PAPER_SEEDS)}
    return out


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
    ap.add_argument("--seeds", nargs="+", type=int, default=PAPER_SEEDS[:2],
                    help="seeds to train (default: the paper's first two)")
    ap.add_argument("--keep-weights", choices=KEEP_WEIGHTS, help="keep.weights (default: the paper's)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch project")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="tfreeze-disk-"))
    clean_copy(work)
    p = config.load(REPO / "profiles" / "paper.yaml")  # the profile over the schema defaults, in full
    if args.keep_weights:
        p["keep"]["weights"] = args.keep_weights
    policy = p["keep"]["weights"]
    for key, value in {**CHANGES, "grid.seeds": args.seeds}.items():
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
    per_cell = cells(work, policy, args.seeds)
    linked = sum(r["mlflow_links"] > 0 for r in per_cell)
    run(["dvc", "config", "--local", "cache.type", "copy"], work, env)
    run(["dvc", "checkout", "--relink", "--force"], work, env)
    copied = measure(work)
    per_mode = scale(per_cell, policy)
    one_copy = sum(r["model_pt_bytes"] + r["other_bytes"] for r in per_cell)
    scaled = {"one_copy_bytes": sum(m["ten_seed_bytes"] for m in per_mode.values())}
    factor = scaled["one_copy_bytes"] / one_copy
    scaled["now_bytes"] = round(now["together"]["unique_bytes"] * factor)
    scaled["dvc_copy_bytes"] = round(copied["together"]["unique_bytes"] * factor)
    print(f"dvc repro of {len(per_cell)} paper cells ({', '.join(per_mode)}; seeds {args.seeds}; "
          f"keep.weights {policy}): {repro_s:.0f} s; DVC cache.type = {cache_type or 'DVC default'}")
    print(f"  {linked} of {len(per_cell)} cells' model.pt share their inode with an MLflow artifact "
          "(the logged model's checkpoint, or a dropped run's record)")
    for label, m in (("now", now), ("DVC cache as copies", copied)):
        parts = ", ".join(f"{name} {gb(v['apparent_bytes'])}" for name, v in m["places"].items())
        print(f"  {label:>19}: {parts}; on disk together {gb(m['together']['unique_bytes'])}")
    for mode, m in per_mode.items():
        print(f"  {mode:>18}: {m['kept_cell_bytes'] / 2**20:9.2f} MiB per cell that keeps its weights, "
              f"{m['dropped_cell_bytes'] / 2**20:.3f} MiB per cell that drops them (model.pt and the rest)")
    print(f"10-seed paper grid, scaled from the measured per-cell bytes (not measured): now "
          f"{gb(scaled['now_bytes'])}, with DVC copies {gb(scaled['dvc_copy_bytes'])}; target "
          f"<= {gb(TARGET_BYTES)}: {'met' if scaled['now_bytes'] <= TARGET_BYTES else 'MISSED'}")
    result = {"seeds": args.seeds, "keep_weights": policy, "repro_seconds": round(repro_s, 1),
              "cache_type": cache_type, "now": now, "dvc_copy": copied, "cells": per_cell,
              "per_mode": per_mode, "scaled_10_seeds": scaled, "target_bytes": TARGET_BYTES,
              "meets_target": scaled["now_bytes"] <= TARGET_BYTES}
    save("disk_footprint", result)
    if args.keep:
        print(f"project kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()

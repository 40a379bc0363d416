"""End-to-end check of the training core on a device: ``training.fit`` as the train stage runs it.

    PYTHONPATH=src python3 benchmarks/gpu_fit_check.py --device cuda

For each mode: a full ``fit`` (best-validation checkpoint, test score, confusion matrix), the same
``fit`` again (are the metrics identical on this device?), and a run killed with SIGKILL after its
first epoch then started again (does it resume to the same metrics?). Synthetic features, random
weights; needs only torch + torchvision. Prints one line per mode and exits non-zero on a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from train_throughput import synthetic

from transfer_freezing.train import core as training

KEYS = ("test_acc", "test_loss", "best_val_acc", "best_epoch")


def fit(args: argparse.Namespace, mode: str, workdir: Path) -> dict:
    cfg = training.RunConfig(model=args.model, freeze=mode, seed=1, epochs=args.epochs, batch_size=16,
                             lr=1e-2, image_size=args.image_size, num_classes=10, device=args.device)
    data = training.Data(synthetic(96, args.image_size, 1), synthetic(32, args.image_size, 2),
                         synthetic(32, args.image_size, 3))
    r = training.fit(cfg, data, workdir)
    assert sum(map(sum, r.confusion)) == 32, "confusion matrix does not count the test split"
    return {k: getattr(r, k) for k in KEYS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_demo")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["freeze_none", "freeze_patch_0_5", "freeze_patch_0_11"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)  # mode, workdir: one fit, JSON out
    args = ap.parse_args()
    if args.child:
        print(json.dumps(fit(args, args.child[0], Path(args.child[1]))))
        return
    ok = True
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b, \
                tempfile.TemporaryDirectory() as c:
            first, again = fit(args, mode, Path(a)), fit(args, mode, Path(b))
            child = [sys.executable, __file__, *sys.argv[1:], "--child", mode, c]
            killed = subprocess.run(child, env={**os.environ, "TFREEZE_KILL_AFTER_EPOCH": "0"},
                                    capture_output=True, text=True)
            resumed = subprocess.run(child, capture_output=True, text=True, check=True)
            after = json.loads(resumed.stdout.strip().splitlines()[-1])
        same = first == again
        resumed_ok = killed.returncode == -9 and "resuming" in resumed.stdout and \
            all(abs(after[k] - first[k]) < 1e-3 for k in KEYS)
        ok &= resumed_ok
        print(f"{args.model} {mode} on {args.device}: test acc {first['test_acc']:.1f} % "
              f"(best val {first['best_val_acc']:.1f} % at epoch {first['best_epoch'] + 1}); "
              f"rerun identical: {same}; killed after epoch 1 and resumed to the same metrics: {resumed_ok}"
              + ("" if same else f" (rerun: {again})"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

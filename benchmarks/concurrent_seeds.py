"""Several training runs at once on one device: aggregate img/s for 1, 2, 4, ... processes.

    PYTHONPATH=src python3 benchmarks/concurrent_seeds.py --model vit_b_16 --mode freeze_patch_0_5 \\
        --image-size 224 --batch-size 32 --device cuda --procs 1 2 4

Each process is one seed's optimised training loop (``training.prepare`` + ``training.run_epoch``)
on synthetic features: they all warm up, start together, and train for the same number of epochs.
Aggregate throughput = all images / (last finish - first start). When one run leaves the GPU idle
(small model, batch 32, launch-bound steps), running the seeds of a mode side by side
(``tfreeze train --jobs N``, ``train.gpus_per_run`` = 1/N) fills it; the ratio to one process says by
how much. Needs only torch + torchvision. Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from train_throughput import device_name, synthetic, timed

from transfer_freezing.train import core as training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_demo")
    ap.add_argument("--mode", default="freeze_patch_0_5")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="training batches per epoch")
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs per process")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def worker(args: argparse.Namespace) -> None:
    """One seed: warm up, say 'ready', wait for 'go', train, print its start/end times as JSON."""
    cfg = training.RunConfig(model=args.model, freeze=args.mode, seed=args.worker, epochs=1,
                             batch_size=args.batch_size, lr=1e-3, image_size=args.image_size,
                             num_classes=10, device=args.device)
    device = training.pick_device(cfg.device)
    training.configure(device)
    n = args.batch_size * args.steps
    data = training.Data(synthetic(n, args.image_size, 1), synthetic(args.batch_size, args.image_size, 2),
                         synthetic(args.batch_size, args.image_size, 3))
    model, opt, _, _ = training.setup(cfg, device)
    net, on_device = training.prepare(cfg, model, data, device)
    timed(lambda: training.run_epoch(net, on_device.train, cfg.batch_size, device, opt), device, 0.0, 2)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.time()
    for _ in range(args.epochs):
        training.run_epoch(net, on_device.train, cfg.batch_size, device, opt)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(json.dumps({"start": start, "end": time.time(), "images": n * args.epochs}), flush=True)


def together(args: argparse.Namespace, k: int) -> dict:
    """Start ``k`` workers, release them at once, and return the aggregate img/s."""
    cmd = [sys.executable, __file__, *sys.argv[1:], "--worker"]
    procs = [subprocess.Popen([*cmd, str(seed)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for seed in range(1, k + 1)]
    for p in procs:
        while p.stdout.readline().strip() != "ready":
            if p.poll() is not None:
                sys.exit(f"a worker failed (exit {p.returncode})")
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    runs = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    return {"procs": k, "wall_s": wall, "aggregate_ips": sum(r["images"] for r in runs) / wall}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return {}
    rows = [together(args, k) for k in args.procs]
    one = rows[0]["aggregate_ips"]
    device = training.pick_device(args.device)
    print(f"{args.model} {args.mode} {args.image_size}px batch {args.batch_size} on {device_name(device)}:")
    print("procs | wall s | aggregate img/s | vs 1 process")
    for r in rows:
        r["ratio"] = r["aggregate_ips"] / one
        print(f"{r['procs']} | {r['wall_s']:.1f} | {r['aggregate_ips']:,.1f} | {r['ratio']:.2f}x")
    result = {"args": {k: v for k, v in vars(args).items() if k != "worker"}, "rows": rows,
              "device": device_name(device)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"concurrent_seeds-{args.model}-{device.type}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()

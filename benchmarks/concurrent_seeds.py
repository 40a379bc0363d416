"""Several training runs at once on one device: aggregate img/s for 1, 2, 4, ... processes.

    PYTHONPATH=src python3 benchmarks/concurrent_seeds.py --model vit_b_16 --mode freeze_patch_0_5 \\
        --image-size 224 --batch-size 32 --device cuda --procs 1 2 4

Each process is one seed's optimised training loop (``training.prepare`` + ``training.run_epoch``)
on synthetic features: they all warm up, start together, and train for the same number of epochs.
Aggregate throughput = all images / (last finish - first start). When one run leaves the GPU idle
(small model, batch 32, launch-bound steps), running the seeds of a mode side by side
(``tfreeze train --jobs N``, ``runtime.gpus_per_run`` = 1/N) fills it; the ratio to one process says by
how much. ``--ensemble K ...`` adds the other candidate, measured in the same run: K seeds in one
process as one stacked model (``ensemble.Ensemble``: torch.func ``stack_module_state`` + ``vmap``,
the frozen weights shared as pretrained ones are), the same images and epochs per seed. Needs only
torch + torchvision. Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from ensemble import Ensemble, share_frozen
from train_throughput import device_name, sync, synthetic, timed

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
    ap.add_argument("--ensemble", type=int, nargs="*", default=[],
                    help="also train this many seeds as one torch.func ensemble in one process (ViT)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def run_config(args: argparse.Namespace, seed: int) -> training.RunConfig:
    return training.RunConfig(model=args.model, freeze=args.mode, seed=seed, epochs=1,
                              batch_size=args.batch_size, lr=1e-3, image_size=args.image_size,
                              num_classes=10, device=args.device)


def data_for(args: argparse.Namespace) -> training.Data:
    n = args.batch_size * args.steps
    return training.Data(synthetic(n, args.image_size, 1), synthetic(args.batch_size, args.image_size, 2),
                         synthetic(args.batch_size, args.image_size, 3))


def worker(args: argparse.Namespace) -> None:
    """One seed: warm up, say 'ready', wait for 'go', train, print its start/end times as JSON."""
    cfg = run_config(args, args.worker)
    device = training.pick_device(cfg.device)
    training.configure(device)
    n = args.batch_size * args.steps
    data = data_for(args)
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
    cmd = [sys.executable, __file__, *args.argv, "--worker"]
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
    return {"route": "processes", "procs": k, "seeds": k, "wall_s": wall,
            "aggregate_ips": sum(r["images"] for r in runs) / wall}


def ensemble_epoch(ens: Ensemble, train: training.Split, batch_size: int, shufflers: list[torch.Generator]
                   ) -> torch.Tensor:
    """One epoch of every seed of ``ens``, each in its run's batch order (``training.shuffler``);
    the last step's losses."""
    n = len(train)
    home = train.labels.device
    orders = torch.stack([torch.randperm(n, generator=g) for g in shufflers]).to(home)
    ens.train()
    for start in range(0, n, batch_size):
        idx = orders[:, start:start + batch_size]
        losses = ens.step(train.images[idx], train.labels[idx])
    return losses


def stacked(args: argparse.Namespace, k: int) -> dict:
    """``k`` seeds as one ``Ensemble`` in this process: warm up, then time ``args.epochs`` epochs."""
    device = training.pick_device(args.device)
    training.configure(device)
    data = data_for(args)
    cfgs = [run_config(args, seed) for seed in range(1, k + 1)]
    models = [training.setup(cfg, device)[0] for cfg in cfgs]
    share_frozen(models)  # before prepare: every seed's frozen prefix (and cache) is the same
    prepared = [training.prepare(cfg, m, data, device) for cfg, m in zip(cfgs, models, strict=True)]
    on_device = prepared[0][1]
    ens = Ensemble([net for net, _ in prepared], lr=1e-3, fused=device.type == "cuda")
    shufflers = [training.shuffler(cfg) for cfg in cfgs]
    timed(lambda: ensemble_epoch(ens, on_device.train, args.batch_size, shufflers), device, 0.0, 2)
    start = time.perf_counter()
    for _ in range(args.epochs):
        ensemble_epoch(ens, on_device.train, args.batch_size, shufflers)
    sync(device)
    wall = time.perf_counter() - start
    images = k * len(on_device.train) * args.epochs
    return {"route": "ensemble", "procs": 1, "seeds": k, "wall_s": wall, "aggregate_ips": images / wall}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the workers are started with
    if args.worker is not None:
        worker(args)
        return {}
    rows = [together(args, k) for k in args.procs] + [stacked(args, k) for k in args.ensemble]
    one = rows[0]["aggregate_ips"]
    device = training.pick_device(args.device)
    print(f"{args.model} {args.mode} {args.image_size}px batch {args.batch_size} on {device_name(device)}:")
    print(f"route | procs | seeds | wall s | aggregate img/s | vs {rows[0]['procs']} process(es)")
    for r in rows:
        r["ratio"] = r["aggregate_ips"] / one
        print(f"{r['route']} | {r['procs']} | {r['seeds']} | {r['wall_s']:.1f} | {r['aggregate_ips']:,.1f} "
              f"| {r['ratio']:.2f}x")
    result = {"args": {k: v for k, v in vars(args).items() if k not in ("worker", "argv")}, "rows": rows,
              "device": device_name(device)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"concurrent_seeds-{args.model}-{device.type}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()

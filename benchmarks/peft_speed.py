"""Training speed and peak memory of the parameter-efficient families against freeze_none, one model, one run.

Each mode trains in its own spawned process (so one mode's peak memory is not another's): the
model built as a run builds it (``training.setup``: seeded weights, the mode's frozen backbone and
added modules, the optimiser over what trains), prepared as a run prepares it (``training.prepare``:
the same fast-forward rewrites; the activation cache off unless --cache, since none of the
parameter-efficient families can use it and freeze_none has nothing constant), then
``training.run_epoch`` over --steps batches of synthetic stored images, best of --rounds; the
whole sequence of modes runs --repeats times in turn (on a shared machine the load drifts) and each
mode keeps its best img/s and its largest peak.

img/s     training images per second (forward, backward, optimiser step), best round;
peak MiB  CUDA: ``torch.cuda.max_memory_allocated`` over the timed rounds (reset after setup);
          CPU: the process's peak resident set over the timed rounds (VmHWM, reset after setup
          through /proc/self/clear_refs): the process, model included;
+ training MiB  the peak above the memory in use when the timed rounds start (activations,
          gradients, optimiser state the steps add).

    python benchmarks/peft_speed.py                                   # vit_demo at 224 px, CPU
    python benchmarks/peft_speed.py --model vit_b_16 --batch-size 4 --steps 3
    python benchmarks/peft_speed.py --model vit_b_16 --batch-size 32 --device cuda
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
from pathlib import Path

import common
import torch

from transfer_freezing.data.inputs import Split
from transfer_freezing.model import freezing
from transfer_freezing.model import registry as models
from transfer_freezing.train import core as training

MODES = ("freeze_none", "lora_r4", "lora_r16", "adapter_houlsby_w16", "adapter_pfeiffer_w64",
         "vpt_shallow_p10", "vpt_deep_p10", "freeze_patch_0_11")
CLASSES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_demo", choices=sorted(models.REGISTRY))
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4, help="timed training batches per round")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per mode (the fastest counts)")
    ap.add_argument("--repeats", type=int, default=2,
                    help="times the whole sequence of modes runs (each mode's best counts)")
    ap.add_argument("--modes", nargs="*", default=list(MODES))
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--cache", action="store_true", help="let the activation cache serve what it can")
    ap.add_argument("--out", type=Path, default=None, help="folder for the JSON (default benchmarks/results)")
    return ap.parse_args(argv)


def _data(n: int, size: int) -> training.Data:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % CLASSES
    split = Split(torch.rand(n, size, size, generator=gen).half(), labels, [f"c{i}" for i in range(n)])
    return training.Data(split, split, split)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def _memory_mib(device: torch.device, peak: bool) -> float:
    """Peak (since ``_reset_peak``) or current memory: CUDA allocated, or the process's resident set."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated if peak else torch.cuda.memory_allocated)(device) / 2**20
    key = "VmHWM:" if peak else "VmRSS:"
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def measure(args: argparse.Namespace, mode: str) -> dict:
    """One mode's row: trainable count and share, best img/s, peak memory (in this process)."""
    device = training.pick_device(args.device)
    training.configure(device)
    cfg = training.RunConfig(args.model, mode, 1, epochs=1, batch_size=args.batch_size, lr=1e-3,
                             image_size=args.image_size, num_classes=CLASSES, device=device.type,
                             activation_cache=args.cache)
    n = args.batch_size * args.steps
    model, opt, trainable, total = training.setup(cfg, device)
    net, data = training.prepare(cfg, model, _data(n, args.image_size), device)
    order = torch.arange(len(data.train))
    training.run_epoch(net, data.train, args.batch_size, device, opt, order[:args.batch_size])  # warm-up
    _reset_peak(device)
    base = _memory_mib(device, peak=False)
    best = float("inf")
    for _ in range(args.rounds):
        start = time.perf_counter()
        training.run_epoch(net, data.train, args.batch_size, device, opt, order)  # ends with a host sync
        best = min(best, time.perf_counter() - start)
    return {"mode": mode, "family": freezing.family_of(args.model, mode), "trainable": trainable,
            "share": trainable / total, "img_per_s": n / best, "peak_mib": _memory_mib(device, peak=True),
            "before_mib": base,
            "device": device.type}


def _child(args: argparse.Namespace, mode: str, queue: mp.Queue) -> None:
    queue.put(measure(args, mode))


def _combine(found: list[dict]) -> dict:
    """One mode's row over its repeats: the best img/s, the largest peak memory, every img/s kept."""
    row = dict(max(found, key=lambda r: r["img_per_s"]))
    top = max(found, key=lambda r: r["peak_mib"])
    row.update(peak_mib=top["peak_mib"], before_mib=top["before_mib"],
               img_per_s_repeats=[r["img_per_s"] for r in found])
    return row


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    for mode in args.modes:
        freezing.check(args.model, mode)  # a bad name fails before any measurement
    ctx = mp.get_context("spawn")
    seen: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    for _ in range(args.repeats):  # the modes in turn, again: drifting load hits every mode alike
        for mode in args.modes:
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(args, mode, queue))
            proc.start()
            seen[mode].append(queue.get())
            proc.join()
    rows = [_combine(found) for found in seen.values()]
    ref = next((r for r in rows if r["mode"] == "freeze_none"), rows[0])
    print(f"{args.model} at {args.image_size} px, batch {args.batch_size}, {args.steps} steps x "
          f"{args.rounds} rounds x {args.repeats} repeats on {rows[0]['device']} "
          f"(activation cache {'on' if args.cache else 'off'})")
    print(f"{'mode':<22} {'family':<9} {'trainable':>12} {'share':>8} {'img/s':>8} {'x none':>7} "
          f"{'peak MiB':>9} {'x none':>7} {'+ training MiB':>15}")
    for r in rows:
        r["speed_vs_none"] = r["img_per_s"] / ref["img_per_s"]
        r["memory_vs_none"] = r["peak_mib"] / ref["peak_mib"]
        r["training_mib"] = r["peak_mib"] - r["before_mib"]
        print(f"{r['mode']:<22} {r['family']:<9} {r['trainable']:>12,} {100 * r['share']:7.2f}% "
              f"{r['img_per_s']:8.2f} {r['speed_vs_none']:7.2f} {r['peak_mib']:9.0f} "
              f"{r['memory_vs_none']:7.2f} {r['training_mib']:15.0f}")
    result = {"model": args.model, "image_size": args.image_size, "batch_size": args.batch_size,
              "steps": args.steps, "rounds": args.rounds, "repeats": args.repeats,
              "activation_cache": args.cache,
              "torch": torch.__version__, "rows": rows}
    if args.out is not None:
        common.RESULTS = args.out
    stamp = time.strftime("%Y%m%d-%H%M%S")
    common.save(f"peft_speed-{args.model}-{rows[0]['device']}-{stamp}", result)
    return result


if __name__ == "__main__":
    main()

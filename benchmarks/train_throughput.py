"""Training throughput per freeze mode: plain path vs optimised path, measured in one process.

plain      the whole model every batch on stored images, data on the host, default SGD;
optimised  ``training.prepare``: data on the device, frozen-prefix activation cache where the
           prefix is constant, fused SGD on CUDA, ``torch.compile`` with --compile.
Both run ``training.run_epoch`` on the same synthetic features with the same seed. Also: the
frozen-prefix cache's build time and memory, the gain of caching a constant stem alone (the
cache does not do that: see ``prefix_cache.cache_depth``), MFU of the ViT-B/16 full fine-tune
step against a matmul peak measured in the same run, and the projected wall time of the paper
profile. Needs only torch + torchvision (and this package on PYTHONPATH). Prints a table and
writes JSON to --out.

    python benchmarks/train_throughput.py                       # vit_demo at 64 px, CPU, minutes
    python benchmarks/train_throughput.py --model resnet_demo
    PYTHONPATH=src python3 benchmarks/train_throughput.py --model vit_b_16 --image-size 224 \\
        --batch-size 32 --steps 20 --device cuda                # see benchmarks/gpu.sh
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from transfer_freezing.data.inputs import Split
from transfer_freezing.model import activation_cache as prefix_cache
from transfer_freezing.model import freezing
from transfer_freezing.model import registry as models
from transfer_freezing.train import core as training

PAPER = {"modes": ["freeze_none", "freeze_patch", "freeze_patch_0_2", "freeze_patch_0_5",
                   "freeze_patch_0_11"], "seeds": 10, "epochs": 20, "train": 800, "val": 100, "test": 100}
CLASSES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vit_demo", choices=sorted(models.REGISTRY))
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3, help="timed training batches per path and mode")
    ap.add_argument("--rounds", type=int, default=3, help="timed epochs per path (best one counts)")
    ap.add_argument("--modes", nargs="*", help="freeze modes (default: all of the model's family)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--frozen-bn", default="eval", choices=["eval", "train"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the optimised path")
    ap.add_argument("--no-stem-probe", action="store_true", help="skip timing a cached stem alone")
    ap.add_argument("--mfu-model", default="vit_b_16", help="'' skips the MFU measurement")
    ap.add_argument("--mfu-image-size", type=int, default=224)
    ap.add_argument("--mfu-batch-size", type=int, default=8)
    ap.add_argument("--mfu-steps", type=int, default=2)
    ap.add_argument("--cpu-bf16", action="store_true", help="also time the MFU step under CPU bf16 autocast")
    ap.add_argument("--out", default="benchmarks/results")
    return ap.parse_args(argv)


# --------------------------------------------------------------------------- timing helpers

def synthetic(n: int, size: int, seed: int) -> Split:
    """Stored-feature-like images (float16 in [0, 1]) with random labels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, size, size, generator=g).half()
    return Split(images, torch.randint(0, CLASSES, (n,), generator=g), [str(i) for i in range(n)])


def head(split: Split, n: int) -> Split:
    return Split(split.images[:n], split.labels[:n], split.clip_ids[:n])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, min_s: float = 0.3, max_reps: int = 50) -> float:
    """Seconds per call of ``fn`` (already warmed up), repeated until ``min_s`` have passed."""
    sync(device)
    t0, reps = time.perf_counter(), 0
    while True:
        fn()
        sync(device)
        reps += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s or reps >= max_reps:
            return elapsed / reps


PEAK_DTYPE = {"cpu": torch.float32, "cuda": torch.bfloat16}  # the precision training uses there


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Best FLOP/s of a large square matmul: fp32 on CPU, bf16 on GPU (the step's precision)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(2):
        a @ b
    best = min(timed(lambda: a @ b, device, min_s=0.5, max_reps=200) for _ in range(3))
    return 2 * n**3 / best


@dataclass
class Runner:
    """One way to train: the module, the data it reads (host or device, images or activations), SGD."""

    net: torch.nn.Module
    data: training.Data
    opt: torch.optim.Optimizer


def rates(runners: dict[str, Runner], bs: int, device: torch.device, rounds: int) -> dict[str, dict]:
    """Training and evaluation img/s of ``training.run_epoch`` per runner: best of ``rounds``.

    The runners take turns within each round, so a burst of load from other processes hits all of
    them alike; the best round is the least disturbed one.
    """
    for r in runners.values():  # warm-up: allocator, oneDNN primitives, autotuning
        training.run_epoch(r.net, head(r.data.train, bs), bs, device, r.opt)
        training.run_epoch(r.net, head(r.data.val, bs), bs, device)
    best = {name: {"train_s": float("inf"), "eval_s": float("inf")} for name in runners}
    for _ in range(rounds):
        for name, r in runners.items():
            t = timed(lambda r=r: training.run_epoch(r.net, r.data.train, bs, device, r.opt), device)
            e = timed(lambda r=r: training.run_epoch(r.net, r.data.val, bs, device), device)
            best[name] = {"train_s": min(best[name]["train_s"], t), "eval_s": min(best[name]["eval_s"], e)}
    return {name: {"train_ips": len(runners[name].data.train) / b["train_s"],
                   "eval_ips": len(runners[name].data.val) / b["eval_s"]} for name, b in best.items()}


# --------------------------------------------------------------------------- one freeze mode

def config(args: argparse.Namespace, mode: str, **extra) -> training.RunConfig:
    base = training.RunConfig(model=args.model, freeze=mode, seed=1, epochs=1, batch_size=args.batch_size,
                              lr=1e-3, frozen_bn=args.frozen_bn, image_size=args.image_size,
                              num_classes=CLASSES, device=args.device, compile=args.compile)
    return replace(base, **extra)


def data_for(args: argparse.Namespace) -> training.Data:
    n = args.batch_size * args.steps
    return training.Data(synthetic(n, args.image_size, 1), synthetic(n, args.image_size, 2),
                         synthetic(args.batch_size, args.image_size, 3))


def plain(args: argparse.Namespace, mode: str, data: training.Data,
          device: torch.device) -> tuple[Runner, dict]:
    model, _, trainable, total = training.setup(config(args, mode), device)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    return Runner(training.Plain(model), data, opt), {"trainable_share": trainable / total}


def optimised(args: argparse.Namespace, mode: str, data: training.Data,
              device: torch.device) -> tuple[Runner, dict]:
    t0 = time.perf_counter()
    cfg = config(args, mode)
    model, opt, _, _ = training.setup(cfg, device)
    setup_s = time.perf_counter() - t0
    prefix_cache.clear_memory()
    sync(device)
    t0 = time.perf_counter()
    net, on_device = training.prepare(cfg, model, data, device)
    sync(device)
    prepare_s = time.perf_counter() - t0
    cached = isinstance(getattr(net, "_orig_mod", net), prefix_cache.Span)
    clips = sum(len(s) for s in data.splits().values())
    return Runner(net, on_device, opt), {
        "setup_s": setup_s, "cached_after": _cached_after(model, args.model) if cached else None,
        "cache_build_s_per_clip": prepare_s / clips if cached else 0.0,
        "cache_mib_per_1000": _mib_per_1000(on_device.train) if cached else 0.0}


def _cached_after(model: torch.nn.Module, name: str) -> str:
    parts = prefix_cache.stages(name)
    return parts[prefix_cache.cache_depth(model, parts) - 1].name


def _mib_per_1000(split: Split) -> float:
    return split.images.element_size() * split.images[0].numel() * 1000 / 2**20


def stem_probe(args: argparse.Namespace, mode: str, data: training.Data,
               device: torch.device) -> tuple[Runner | None, dict]:
    """The rest of the model on a constant prefix that the cache skips (a stem alone), cached anyway."""
    model, opt, _, _ = training.setup(config(args, mode), device)
    parts = prefix_cache.stages(args.model)
    depth = prefix_cache.constant_depth(model, parts)
    if args.no_stem_probe or not depth or prefix_cache.cache_depth(model, parts):
        return None, {}
    prefix, rest = prefix_cache.Span(model, parts[:depth]), prefix_cache.Span(model, parts[depth:])
    ac = partial(training.autocast, device)
    splits = {k: Split(prefix_cache.compute(prefix, s.images, args.batch_size, device, ac),
                       s.labels.to(device), s.clip_ids) for k, s in data.splits().items()}
    return Runner(rest, training.Data(**splits), opt), {
        "stem_cached_after": parts[depth - 1].name, "stem_cache_mib_per_1000": _mib_per_1000(splits["train"])}


def measure(args: argparse.Namespace, mode: str, device: torch.device) -> dict:
    data = data_for(args)
    plain_runner, row = plain(args, mode, data, device)
    opt_runner, info = optimised(args, mode, data, device)
    stem_runner, stem_info = stem_probe(args, mode, data, device)
    runners = {"plain": plain_runner, "opt": opt_runner, **({"stem": stem_runner} if stem_runner else {})}
    row = {"mode": mode, **row, **info, **stem_info}
    for name, r in rates(runners, args.batch_size, device, args.rounds).items():
        row[f"{name}_train_ips"], row[f"{name}_eval_ips"] = r["train_ips"], r["eval_ips"]
    row["train_ratio"] = row["opt_train_ips"] / row["plain_train_ips"]
    row["eval_ratio"] = row["opt_eval_ips"] / row["plain_eval_ips"]
    row["paper_run_ratio"] = run_seconds(row, "plain") / run_seconds(row, "opt")
    return row


# --------------------------------------------------------------------------- paper profile

def run_seconds(row: dict, path: str, cache: bool = True) -> float:
    """One paper-profile run (20 epochs of 800 + 100 clips, test once) on ``path``'s rates."""
    p = PAPER
    epoch = p["train"] / row[f"{path}_train_ips"] + p["val"] / row[f"{path}_eval_ips"]
    build = row["cache_build_s_per_clip"] * (p["train"] + p["val"] + p["test"]) if path == "opt" else 0
    return p["epochs"] * epoch + p["test"] / row[f"{path}_eval_ips"] + (build if cache else 0)


def projection(rows: list[dict]) -> dict:
    """Paper profile wall time: modes x seeds runs; with ImageNet weights a cache serves all seeds."""
    chosen = [r for r in rows if r["mode"] in PAPER["modes"]] or rows
    per_mode = {}
    for r in chosen:
        build = r["cache_build_s_per_clip"] * (PAPER["train"] + PAPER["val"] + PAPER["test"])
        per_mode[r["mode"]] = {
            "plain_s": PAPER["seeds"] * (run_seconds(r, "plain") + r["setup_s"]),
            "opt_s": PAPER["seeds"] * (run_seconds(r, "opt", cache=False) + r["setup_s"]) + build,
        }
    return {"profile": PAPER, "modes": [r["mode"] for r in chosen], "per_mode": per_mode,
            "plain_minutes": sum(m["plain_s"] for m in per_mode.values()) / 60,
            "opt_minutes": sum(m["opt_s"] for m in per_mode.values()) / 60,
            "note": "training + evaluation + model setup; excludes process start and MLflow logging"}


# --------------------------------------------------------------------------- MFU

def _cpu_attention_flops(query, key, value, *_, out_shape=None, **__) -> int:
    return flop_counter.sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *_, out_shape=None, **__) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)


def _count_cpu_attention() -> None:
    """Teach FlopCounterMode the CPU flash-attention kernels (torch counts only the CUDA ones).

    Without this, attention's matmuls (5 % of ViT-B/16's step FLOPs) count as zero on the CPU,
    and the CPU's MFU comes out that much lower than the same step's MFU on a GPU.
    """
    aten = torch.ops.aten
    for op, formula in ((aten._scaled_dot_product_flash_attention_for_cpu, _cpu_attention_flops),
                        (aten._scaled_dot_product_flash_attention_for_cpu_backward,
                         _cpu_attention_backward_flops)):
        try:
            flop_counter.register_flop_formula(op)(formula)
        except RuntimeError:  # a later torch counts it already
            pass


_count_cpu_attention()


def step_flops(net: torch.nn.Module, batch: Split, device: torch.device) -> int:
    """FLOPs of one training step (forward + backward) of ``net`` counted by torch's FlopCounterMode."""
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.0)
    with FlopCounterMode(display=False) as counter:
        training.run_epoch(net, batch, len(batch), device, opt)
    return counter.get_total_flops()


def mfu(args: argparse.Namespace, device: torch.device, peak: float) -> dict:
    """ViT-B/16 full fine-tune: achieved FLOP/s of the plain and optimised steps over ``peak``.

    MFU counts the model's FLOPs (torchvision's full forward + backward) for both paths. The
    optimised path skips some of them (``readout``), so its hardware utilisation (``opt_hfu``:
    the FLOPs it does execute, per second, over ``peak``) is reported too. The peak is measured
    again right before and after the step (a noisy machine's peak drifts over a long run) and
    the highest of the three counts, so a disturbed peak cannot inflate MFU.
    """
    margs = argparse.Namespace(**{**vars(args), "model": args.mfu_model, "image_size": args.mfu_image_size,
                                  "batch_size": args.mfu_batch_size, "steps": args.mfu_steps,
                                  "rounds": min(args.rounds, 2)})
    data = data_for(margs)
    batch = head(data.train, margs.batch_size)
    cfg = config(margs, "freeze_none")
    model, _, _, _ = training.setup(cfg, device)
    flops = step_flops(training.Plain(model), batch, device) / margs.batch_size
    net, on_device = training.prepare(cfg, model, training.Data(batch, batch, batch), device)
    executed = step_flops(net, on_device.train, device) / margs.batch_size
    peaks = [peak, matmul_peak(device, PEAK_DTYPE[device.type])]
    row = measure(margs, "freeze_none", device)
    peaks.append(matmul_peak(device, PEAK_DTYPE[device.type]))
    peak = max(peaks)
    out = {"model": margs.model, "image_size": margs.image_size, "batch_size": margs.batch_size,
           "gflop_per_image": flops / 1e9, "opt_executed_gflop_per_image": executed / 1e9,
           "peak_gflops": peak / 1e9, "peak_gflops_samples": [p / 1e9 for p in peaks], "row": row,
           "plain_mfu": flops * row["plain_train_ips"] / peak, "opt_mfu": flops * row["opt_train_ips"] / peak,
           "opt_hfu": executed * row["opt_train_ips"] / peak}
    if args.cpu_bf16 and device.type == "cpu":
        out["cpu_bf16_train_ips"] = cpu_bf16_rate(margs, data, device)
    return out


def cpu_bf16_rate(args: argparse.Namespace, data: training.Data, device: torch.device) -> float:
    """The same step under CPU bf16 autocast (not used by training: it changes the numbers)."""
    model, opt, _, _ = training.setup(config(args, "freeze_none"), device)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        measured = rates({"bf16": Runner(training.Plain(model), data, opt)}, args.batch_size, device, 1)
    return measured["bf16"]["train_ips"]


# --------------------------------------------------------------------------- report

def _rate(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


COLUMNS = [("mode", str), ("trainable_share", "{:.2%}".format), ("cached_after", str),
           ("plain_train_ips", _rate), ("opt_train_ips", _rate), ("train_ratio", "{:.2f}x".format),
           ("plain_eval_ips", _rate), ("opt_eval_ips", _rate), ("paper_run_ratio", "{:.2f}x".format),
           ("cache_mib_per_1000", "{:.1f}".format), ("stem_train_ips", _rate)]


def table(rows: list[dict]) -> str:
    lines = [" | ".join(name for name, _ in COLUMNS)]
    for r in rows:
        lines.append(" | ".join("-" if r.get(k) is None else fmt(r[k]) for k, fmt in COLUMNS))
    return "\n".join(lines)


def report(result: dict) -> None:
    a = result["args"]
    print(f"\n{a['model']} {a['image_size']}px batch {a['batch_size']} on {result['device_name']} "
          f"({result['threads']} threads), img/s:")
    print(table(result["rows"]))
    proj = result["projection"]
    print(f"paper profile at these settings ({len(proj['modes'])} modes x {PAPER['seeds']} seeds x "
          f"{PAPER['epochs']} epochs x {PAPER['train']} + {PAPER['val']} clips, {PAPER['test']} test): "
          f"plain {proj['plain_minutes']:.1f} min, optimised {proj['opt_minutes']:.1f} min")
    for mode, m in proj["per_mode"].items():
        print(f"  {mode}: plain {m['plain_s'] / 60:.1f} min, optimised {m['opt_s'] / 60:.1f} min")
    if result.get("mfu"):
        m = result["mfu"]
        print(f"MFU {m['model']} {m['image_size']}px batch {m['batch_size']} full fine-tune: "
              f"{m['gflop_per_image']:.1f} GFLOP/img, peak {m['peak_gflops']:.0f} GFLOP/s "
              f"(best of {', '.join(f'{p:.0f}' for p in m['peak_gflops_samples'])}) "
              f"({result['peak_dtype']} matmul); plain {m['row']['plain_train_ips']:.2f} img/s = "
              f"{m['plain_mfu']:.1%}, optimised {m['row']['opt_train_ips']:.2f} img/s = {m['opt_mfu']:.1%}")
        print(f"  optimised step executes {m['opt_executed_gflop_per_image']:.1f} GFLOP/img "
              f"(class-token-only last block): hardware utilisation {m['opt_hfu']:.1%}")
        if "cpu_bf16_train_ips" in m:
            print(f"  CPU bf16 autocast (not used, changes the numbers): {m['cpu_bf16_train_ips']:.2f} img/s "
                  f"= {m['cpu_bf16_train_ips'] / m['row']['opt_train_ips']:.2f}x the fp32 step")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = training.pick_device(args.device)
    training.configure(device)
    dtype = PEAK_DTYPE[device.type]
    peak = matmul_peak(device, dtype)
    modes = args.modes or list(freezing.modes(args.model))
    rows = []
    print(table(rows), flush=True)
    for mode in modes:
        rows.append(measure(args, mode, device))
        print(table(rows[-1:]).splitlines()[1], flush=True)
    result = {"args": vars(args), "torch": torch.__version__, "python": platform.python_version(),
              "device_name": device_name(device), "threads": torch.get_num_threads(),
              "peak_dtype": str(dtype), "peak_gflops": peak / 1e9, "rows": rows,
              "projection": projection(rows), "mfu": mfu(args, device, peak) if args.mfu_model else None}
    report(result)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) / f"train_throughput-{args.model}-{device.type}-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()

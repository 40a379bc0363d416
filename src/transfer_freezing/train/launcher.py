"""Run several grid cells as concurrent ``tfreeze`` processes: seeds side by side on one GPU.

One ViT-B/16 run at batch 32 leaves an H100 mostly idle (launch-bound steps), so the seeds of a
freeze mode train faster side by side than one after another (``benchmarks/concurrent_seeds.py``
measures by how much). Each cell is its own process with its own outputs and MLflow run, exactly
as ``tfreeze train`` writes them one at a time; on a CPU the cores are split between them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..errors import UserError

Cell = tuple[str, str, int, int]  # model, freeze mode, seed, fold


def run_cells(cells: list[Cell], base_args: list[str], jobs: int, gpu: bool) -> None:
    """``tfreeze train <base_args> --model m --freeze f --seed s --fold k`` per cell, ``jobs`` at a time."""
    slots = _cpu_slots(jobs) if not gpu else [None] * jobs
    free = list(range(jobs))

    def one(cell: Cell) -> tuple[Cell, subprocess.CompletedProcess]:
        slot = free.pop()
        try:
            return cell, _run(cell, base_args, _pin(slots[slot]))
        finally:
            free.append(slot)

    failed = []
    with ThreadPoolExecutor(jobs) as pool:
        for cell, proc in pool.map(one, cells):
            lines = (proc.stdout.strip() or proc.stderr.strip() or "(no output)").splitlines()
            print(lines[-1] if proc.returncode == 0 else f"{'/'.join(map(str, cell))}: "
                  f"{(proc.stderr.strip() or lines[-1]).splitlines()[-1]}", flush=True)
            if proc.returncode:
                failed.append("/".join(map(str, cell)))
    if failed:
        raise UserError(f"{len(failed)} of {len(cells)} runs failed: {', '.join(failed)} "
                        "(their messages are above; re-run them one at a time)")


def _run(cell: Cell, base_args: list[str], pin: Callable[[], None] | None) -> subprocess.CompletedProcess:
    model, freeze, seed, fold = cell
    cmd = [sys.executable, "-m", "transfer_freezing.cli", "train", *base_args,
           "--model", model, "--freeze", freeze, "--seed", str(seed), "--fold", str(fold)]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=pin, check=False)


def _cpu_slots(jobs: int) -> list[set[int]]:
    cpus = sorted(os.sched_getaffinity(0))
    if jobs > len(cpus):
        raise UserError(f"--jobs {jobs} is more than the {len(cpus)} CPUs this process may use")
    return [set(cpus[i::jobs]) for i in range(jobs)]


def _pin(cpus: set[int] | None) -> Callable[[], None] | None:
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))

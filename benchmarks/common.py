"""Shared helpers of the benchmark scripts: where results go and how they are written."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

RESULTS = Path(os.environ.get("OUT") or Path(__file__).resolve().parent / "results")


def machine() -> dict:
    """What the figures were measured on."""
    return {"cpus": len(os.sched_getaffinity(0)), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version()}


def save(name: str, result: dict) -> Path:
    """Write ``result`` (plus the machine description) as ``RESULTS/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**result, "machine": machine()}, indent=2) + "\n")
    print(f"wrote {path}")
    return path

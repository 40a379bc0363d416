"""Throughput of the features stage's recipe on 30-second clips: clips/s over all cores.

    python benchmarks/features.py [--clips-per-class 10] [--workers 0]

Generates a small synthetic corpus of 30 s clips (GTZAN's length), then times
``features.compute_images`` (decode + log-mel + resize + min-max, spread over processes) at the
study's 224x224. Target: >= 20 clips/s on 2 cores (GTZAN's 1,000 clips in under a minute).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import save

from transfer_freezing.data import features, synthetic

TARGET_CLIPS_PER_S = 20.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips-per-class", type=int, default=10, help="10 genres x this many clips")
    ap.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manifest = synthetic.generate(Path(tmp), args.clips_per_class, clip_seconds=30.0)
        paths = [str(Path(tmp) / f) for f in manifest["file"]]
        recipe = features.Recipe(22050, 2048, 512, 128, "log1p", args.image_size)
        features.compute_images(paths[:2], recipe, args.workers, "float16")  # warm-up: imports, pools
        t0 = time.perf_counter()
        images = features.compute_images(paths, recipe, args.workers, "float16")
        seconds = time.perf_counter() - t0
    rate = len(paths) / seconds
    workers = args.workers or len(os.sched_getaffinity(0))
    print(f"{len(paths)} clips of 30 s -> {images.shape[1:]} in {seconds:.2f} s on {workers} worker(s): "
          f"{rate:.1f} clips/s (target >= {TARGET_CLIPS_PER_S:g}; GTZAN's 1,000 clips in "
          f"{1000 / rate:.0f} s)")
    save("features", {"clips": len(paths), "seconds": seconds, "clips_per_s": rate, "workers": workers,
                      "image_size": args.image_size, "target_clips_per_s": TARGET_CLIPS_PER_S,
                      "meets_target": rate >= TARGET_CLIPS_PER_S})


if __name__ == "__main__":
    main()

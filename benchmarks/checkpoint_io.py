"""Checkpoint bytes and I/O share of a training cell: the previous full checkpoints vs lean ones.

    python benchmarks/checkpoint_io.py [--model vit_b_16] [--image-size 32] [--epochs 3]

Runs ``train.core.fit`` (the training core the train stage runs) for each freeze mode twice in one
process, on the same random features. Full (what this project wrote before: the whole model and
optimiser after every epoch, the whole best model at every improvement): ``FullWrites``, a
``hooks.Hooks`` that makes exactly those writes from the run's ``TrainState`` at each epoch's end,
while the run's own resumable state never comes due; its bytes and seconds are the full style's,
and its wall time is the run's less the one lean ``model.pt`` the run writes at its end (which the
full style did not). Lean: ``runtime.checkpoint_seconds`` as given (what it writes now: the changed
part, rarely, the best weights once). Prints bytes written per cell, the seconds spent writing and
their share of the cell's wall time, and the ratios measured in this run.

ViT-B/16 at a small image size keeps CPU training quick while the checkpoints keep their real size
(the parameters do not depend on the image size, apart from the position embedding). On this CPU
the steps are far slower than on a GPU, so the I/O share here is much lower than on an H100/H200
for the same bytes; the bytes per cell are the same on any device.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from common import save

from transfer_freezing.data.inputs import Split
from transfer_freezing.train import checkpoint, core
from transfer_freezing.train.hooks import Hooks

MODES = ("freeze_none", "freeze_patch_0_5", "freeze_patch_0_11")


def data(n: int, size: int, classes: int = 10) -> core.Data:
    g = torch.Generator().manual_seed(0)

    def split(k: int) -> Split:
        return Split(torch.rand(k, size, size, generator=g).half(), torch.arange(k) % classes,
                     [f"c{i}" for i in range(k)])

    return core.Data(split(n), split(n // 4), split(n // 4))


class FullWrites(Hooks):
    """The checkpoints of the full style, written from the run's state after every epoch:
    ``last.pt`` with the whole model (every state-dict key counted as changed, no best weights),
    and the whole model as ``model.pt`` whenever validation accuracy improved."""

    def __init__(self, folder: Path, cfg: core.RunConfig):
        self.folder, self.cfg, self.io = folder, cfg, checkpoint.IO()
        folder.mkdir()  # the run's own folder holds its lean model.pt; the names are the same here

    def epoch_end(self, epoch: int, state: checkpoint.TrainState) -> None:
        whole = set(state.model.state_dict())
        replace(state, changed=whole, best_weights={}).save(self.folder / "last.pt", self.cfg, None, self.io)
        if state.best["epoch"] == epoch:
            checkpoint.save_model(self.folder / "model.pt", checkpoint.lean_state(state.model, whole),
                                  self.cfg, state.frozen, self.io)


def cell(cfg: core.RunConfig, d: core.Data, style: str, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="tfreeze-ckpt-") as tmp:
        if style == "full":
            full = FullWrites(Path(tmp) / "full", cfg)
            result = core.fit(cfg, d, Path(tmp), checkpoint_seconds=float("inf"), hooks=full)
            written, io_seconds = full.io.bytes, full.io.seconds
            wall = result.wall_seconds - result.checkpoint_seconds  # less the lean model.pt
            model_pt = (full.folder / "model.pt").stat().st_size
        else:
            result = core.fit(cfg, d, Path(tmp), checkpoint_seconds=seconds)
            written, io_seconds = result.checkpoint_bytes, result.checkpoint_seconds
            wall = result.wall_seconds
            model_pt = (Path(tmp) / "model.pt").stat().st_size
    return {"bytes_written": written, "model_pt_bytes": model_pt, "io_seconds": round(io_seconds, 3),
            "wall_seconds": round(wall, 3), "io_share": round(io_seconds / wall, 4)}


def _line(r: dict) -> str:
    return (f"{r['bytes_written'] / 2**20:9.3f} MiB written "
            f"(model.pt {r['model_pt_bytes'] / 1024:,.1f} KiB), "
            f"I/O {r['io_seconds']:5.2f} s = {100 * r['io_share']:5.2f} % of {r['wall_seconds']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_b_16")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--checkpoint-seconds", type=float, default=60.0)
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    args = parser.parse_args()
    d = data(args.clips, args.image_size)
    rows = {}
    for mode in args.modes:
        cfg = core.RunConfig(model=args.model, freeze=mode, seed=1, epochs=args.epochs, batch_size=32,
                             lr=1e-3, image_size=args.image_size, device="cpu", activation_cache=False)
        full = cell(cfg, d, "full", 0.0)
        lean = cell(cfg, d, "lean", args.checkpoint_seconds)
        rows[mode] = {"full": full, "lean": lean,
                      "bytes_ratio": round(full["bytes_written"] / max(lean["bytes_written"], 1), 1),
                      "io_seconds_ratio": round(full["io_seconds"] / max(lean["io_seconds"], 1e-6), 1)}
        ratio = rows[mode]["bytes_ratio"]
        print(f"{mode:>18}: full {_line(full)} | lean {_line(lean)} | {ratio}x fewer bytes")
    save(f"checkpoint_io-{args.model}-{args.image_size}px",
         {"args": vars(args), "modes": rows, "targets": {"io_share_max": 0.05}})


if __name__ == "__main__":
    main()

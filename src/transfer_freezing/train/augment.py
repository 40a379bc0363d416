"""Training-time augmentation of the stored spectrogram images: the original study's three operations.

Per example, on the device, inside the training loop (``core.run_epoch``, training batches only;
validation, test and ``predict`` see the stored images unchanged):

1. a circular shift along the time axis by a whole number of frames drawn uniformly from
   ``-time_shift .. +time_shift`` (``torch.roll`` per example: what leaves one end comes in at
   the other);
2. torchaudio's ``FrequencyMasking(freq_mask, iid_masks=True)``: one band of ``0 .. freq_mask - 1``
   adjacent rows (mel bins) set to 0;
3. torchaudio's ``TimeMasking(time_mask, iid_masks=True)``: one band of ``0 .. time_mask - 1``
   adjacent columns (frames) set to 0.

A stored image is ``(H, W) = (frequency, time)`` (``data.features.spectrogram_image``: mel bins
top to bottom, frames left to right, min-max scaled to [0, 1]), which is torchaudio's
``(..., freq, time)`` layout, so the transforms see a batch ``(B, H, W)`` as it is stored. The
masks write 0, the image's minimum, before ``to_model_input`` normalises it; the result keeps the
stored dtype (rolls and zeros are exact in float16 and uint8).

Randomness: torchaudio draws from the global generators, so every batch runs inside
``torch.random.fork_rng`` with the generators seeded from (run seed, epoch, batch index). The same
run therefore draws the same augmentations on a rerun and after a resume at an epoch boundary (no
generator state to checkpoint), and the shuffle / initialisation streams of the run are untouched.
torchaudio is imported only when augmentation is on: the training core without it needs torch
and torchvision only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentConfig:
    """The sizes of the three operations (0 switches one off)."""

    time_shift: int = 10
    freq_mask: int = 20
    time_mask: int = 30

    @property
    def active(self) -> bool:
        return bool(self.time_shift or self.freq_mask or self.time_mask)


class Augment:
    """``(B, H, W)`` stored training images -> augmented images of the same shape and dtype."""

    def __init__(self, cfg: AugmentConfig, seed: int):
        import torchaudio  # only here: see the module docstring

        self.cfg, self.seed = cfg, seed
        ops = torchaudio.transforms
        self.freq = ops.FrequencyMasking(cfg.freq_mask, iid_masks=True) if cfg.freq_mask else None
        self.time = ops.TimeMasking(cfg.time_mask, iid_masks=True) if cfg.time_mask else None

    def __call__(self, images: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        device = images.device
        cuda = device.type == "cuda"
        devices = [device.index if device.index is not None else torch.cuda.current_device()] if cuda else []
        with torch.random.fork_rng(devices=devices):
            seed = batch_seed(self.seed, epoch, step)
            torch.random.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed(seed)  # the current device's generator, restored on exit
            x = images.float()
            if self.cfg.time_shift:
                x = time_shift(x, torch.randint(-self.cfg.time_shift, self.cfg.time_shift + 1,
                                                (len(x),), device=device))
            if self.freq is not None:
                x = self.freq(x)
            if self.time is not None:
                x = self.time(x)
        return x.to(images.dtype)


def time_shift(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Each ``(H, W)`` image rolled by its own number of columns (``torch.roll`` along time, per example)."""
    width = images.shape[-1]
    source = (torch.arange(width, device=images.device) - shifts[:, None]) % width  # (B, W)
    return images.gather(-1, source[:, None, :].expand_as(images))


def batch_seed(seed: int, epoch: int, step: int) -> int:
    """A 63-bit seed for one training batch of one run, from (run seed, epoch, batch index)."""
    digest = hashlib.sha256(f"augment/{seed}/{epoch}/{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)

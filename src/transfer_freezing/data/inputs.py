"""Model inputs in memory (torch only): one split's tensors, and stored images -> normalised RGB."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch

from . import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class Split:
    """One split in memory: images (N, H, W) as stored (or cached activations), labels, clip ids."""

    images: torch.Tensor
    labels: torch.Tensor
    clip_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device) -> Split:
        """The same split with its tensors on ``device`` (moved once per run, not per batch)."""
        return Split(self.images.to(device), self.labels.to(device), self.clip_ids)


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) stored images -> (B, 3, H, W) ImageNet-normalised floats.

    The grey image is broadcast over three channels (no copy before the arithmetic), and the
    per-channel mean/std turn it into the three slightly different planes the original fed its ViT.
    """
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    mean, std = _stats(x.device)
    return (x.unsqueeze(1).expand(-1, 3, -1, -1) - mean) / std


@cache
def _stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Made once per device: a host->GPU copy per batch would stall the GPU queue twice a step.
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return mean, std

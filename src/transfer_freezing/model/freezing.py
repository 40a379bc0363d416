"""Freeze modes as data (module-name prefixes per mode) and the small helper that applies them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..errors import UserError
from . import registry as models

# The original study's modes, by family. Each maps to the module-name prefixes it freezes,
# expressed through the spec's parts so the demo variants mean the same thing.
_VIT_MODES = ("freeze_none", "freeze_patch", "freeze_patch_0_2", "freeze_patch_0_5",
              "freeze_patch_0_8", "freeze_patch_0_11")
_RESNET_MODES = ("freeze_none", "freeze_0", "freeze_0_1", "freeze_0_1_2", "freeze_0_1_2_3",
                 "freeze_0_1_2_3_4")
_GENERIC_VIT = re.compile(r"freeze_patch_0_(\d+)")


@dataclass(frozen=True)
class FreezePlan:
    """What one mode freezes on one model: prefixes, and how many backbone blocks that covers."""

    mode: str
    prefixes: tuple[str, ...]
    frozen_blocks: int


def modes(model_name: str) -> tuple[str, ...]:
    """The named modes of ``model_name``'s family (``freeze_patch_0_<k>`` also works for ViTs)."""
    return _VIT_MODES if models.spec(model_name).family == "vit" else _RESNET_MODES


def plan(model_name: str, mode: str) -> FreezePlan:
    s = models.spec(model_name)
    if s.family == "vit":
        return _vit_plan(s, mode)
    return _resnet_plan(s, mode)


def prefixes(model_name: str, mode: str) -> tuple[str, ...]:
    return plan(model_name, mode).prefixes


def _unknown(model_name: str, mode: str) -> UserError:
    extra = " (or freeze_patch_0_<k>)" if models.spec(model_name).family == "vit" else ""
    return UserError(
        f"unknown freeze mode {mode!r} for {model_name}; valid: {', '.join(modes(model_name))}{extra}"
    )


def _vit_plan(s: models.ModelSpec, mode: str) -> FreezePlan:
    if mode == "freeze_none":
        return FreezePlan(mode, (), 0)
    if mode == "freeze_patch":
        return FreezePlan(mode, s.stem, 0)
    match = _GENERIC_VIT.fullmatch(mode)
    if not match or int(match.group(1)) >= len(s.blocks):
        raise _unknown_for(s, mode)
    last = int(match.group(1))
    frozen = s.stem + s.blocks[: last + 1]
    if last == len(s.blocks) - 1:
        # The original's "0_11" froze the whole backbone (class token and final norm too):
        # a linear probe on the head, 7,690 trainable parameters for ViT-B/16.
        frozen += s.tail
    return FreezePlan(mode, frozen, last + 1)


def _resnet_plan(s: models.ModelSpec, mode: str) -> FreezePlan:
    if mode not in _RESNET_MODES:
        raise _unknown_for(s, mode)
    depth = _RESNET_MODES.index(mode)  # freeze_0 -> stem, freeze_0_1 -> stem + layer1, ...
    frozen = s.stem + s.blocks[: max(depth - 1, 0)] if depth else ()
    return FreezePlan(mode, frozen, max(depth - 1, 0))


def _unknown_for(s: models.ModelSpec, mode: str) -> UserError:
    name = next(n for n, v in models.REGISTRY.items() if v is s)
    return _unknown(name, mode)


def freeze(
    model: nn.Module, prefixes: tuple[str, ...], freeze_bn_stats: bool = True
) -> tuple[int, int]:
    """Stop gradients for every parameter under ``prefixes`` (timm's ``freeze``, by name).

    With ``freeze_bn_stats`` the BatchNorm layers inside frozen modules are swapped for
    torchvision's ``FrozenBatchNorm2d``, so their running statistics stop too; without it they
    keep updating in train mode, which is what the original study did.
    Returns (trainable, total) parameter counts, taken before any BatchNorm swap.
    """
    for name, param in model.named_parameters():
        if under(name, prefixes):
            param.requires_grad_(False)
    counts = count(model)
    if freeze_bn_stats:
        for name, module in list(model.named_modules()):
            if isinstance(module, nn.BatchNorm2d) and under(name, prefixes):
                _swap(model, name, _frozen_copy(module))
    return counts


def _frozen_copy(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    frozen.load_state_dict(bn.state_dict())  # drops num_batches_tracked
    return frozen.to(bn.weight.device)


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def count(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total

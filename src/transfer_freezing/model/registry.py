"""Model registry: torchvision architectures with a new classification head, and their weights."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError, first_line

if TYPE_CHECKING:  # torch and torchvision load when a model is built: naming one needs neither
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture and where its parts are.

    ``blocks`` are the module names of the backbone's stages in order (the unit a freeze mode
    counts); ``stem`` is what comes before them; ``head`` is the classifier that gets replaced.
    """

    family: str
    build: Callable[[int], nn.Module]
    head: str
    stem: tuple[str, ...]
    blocks: tuple[str, ...]
    tail: tuple[str, ...]
    weights: str | None  # torchvision's weights enum member, e.g. "ViT_B_16_Weights.IMAGENET1K_V1"
    fixed_image_size: int | None
    description: str


    def weights_url(self) -> str:
        """The download URL torchvision gives these weights (its file name is what the hub cache holds)."""
        from torchvision import models as tvm

        enum, _, member = self.weights.partition(".")
        return getattr(getattr(tvm, enum), member).url


def _vit(image_size: int, **arch) -> nn.Module:
    from torchvision import models as tvm

    return tvm.VisionTransformer(image_size=image_size, patch_size=16, **arch)


def _resnet50(image_size: int) -> nn.Module:
    from torchvision import models as tvm

    return tvm.resnet50()


def _resnet_demo(image_size: int) -> nn.Module:
    from torchvision import models as tvm
    from torchvision.models.resnet import BasicBlock

    # Same four stages as ResNet-50 (stem, layer1..layer4, fc), one BasicBlock each: ~4.9 M params.
    return tvm.ResNet(BasicBlock, [1, 1, 1, 1])


_VIT_BLOCKS = tuple(f"encoder.layers.encoder_layer_{i}" for i in range(12))
_VIT_PARTS = dict(
    family="vit",
    head="heads.head",
    stem=("conv_proj", "encoder.pos_embedding"),
    blocks=_VIT_BLOCKS,
    tail=("class_token", "encoder.ln"),
)
_RESNET_PARTS = dict(
    family="resnet",
    head="fc",
    stem=("conv1", "bn1"),
    blocks=("layer1", "layer2", "layer3", "layer4"),
    tail=(),
)

REGISTRY: dict[str, ModelSpec] = {
    "vit_b_16": ModelSpec(
        build=partial(_vit, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
        weights="ViT_B_16_Weights.IMAGENET1K_V1",
        fixed_image_size=None,
        description="torchvision ViT-B/16 (the study's model)",
        **_VIT_PARTS,
    ),
    "vit_demo": ModelSpec(
        build=partial(_vit, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768),
        weights=None,
        fixed_image_size=None,
        description="ViT with ViT-B/16's block structure (12 blocks, patch 16), width 192: offline demo",
        **_VIT_PARTS,
    ),
    "resnet50": ModelSpec(
        build=_resnet50,
        weights="ResNet50_Weights.IMAGENET1K_V2",
        fixed_image_size=None,
        description="torchvision ResNet-50 (the CNN contrast)",
        **_RESNET_PARTS,
    ),
    "resnet_demo": ModelSpec(
        build=_resnet_demo,
        weights=None,
        fixed_image_size=None,
        description="ResNet with ResNet-50's stages (stem, layer1-4), one BasicBlock each: offline demo",
        **_RESNET_PARTS,
    ),
}


def spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise UserError(f"unknown model {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build(
    name: str,
    num_classes: int,
    image_size: int = 224,
    weights: str = "none",
    weights_path: str | None = None,
) -> nn.Module:
    """Build ``name`` for ``image_size`` inputs, load weights, replace the head by ``num_classes``."""
    s = spec(name)
    if weights == "imagenet" and image_size != 224:
        raise UserError(f"{name} with ImageNet weights needs features.image_size = 224 (got {image_size})")
    if image_size % 16 and s.family == "vit":
        raise UserError(f"features.image_size = {image_size}: a ViT needs a multiple of 16")
    model = s.build(image_size)
    if weights == "imagenet":
        load_pretrained(model, name, weights_path)
    _replace_head(model, s.head, num_classes)
    return model


def _replace_head(model: nn.Module, head: str, num_classes: int) -> None:
    from torch import nn

    parent_name, _, leaf = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old: nn.Linear = getattr(parent, leaf)
    setattr(parent, leaf, nn.Linear(old.in_features, num_classes))


def cache_file(name: str) -> Path:
    """Where torchvision's own loader looks for ``name``'s ImageNet weights (``$TORCH_HOME``)."""
    s = spec(name)
    if s.weights is None:
        raise UserError(f"{name} has no ImageNet weights; use train.weights = none")
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(s.weights_url())


def load_pretrained(model: nn.Module, name: str, weights_path: str | None = None) -> None:
    """Load ImageNet weights from ``weights_path`` or the torch hub cache, downloading if allowed."""
    import torch

    path = weights_file(name, weights_path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user problem
        raise UserError(
            f"weights file {path} could not be read as a state dict ({first_line(err)}); "
            f"expected {expected_file(name)}, a torch.save'd state_dict"
        ) from err
    if not isinstance(state, dict):
        raise UserError(f"weights file {path} holds a {type(state).__name__}, not a state dict; "
                        f"expected {expected_file(name)}")
    misfit = _misfit(model.state_dict(), state)
    if misfit:
        raise UserError(f"weights file {path} does not fit {name}: {misfit}; "
                        f"expected {expected_file(name)}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise UserError(f"weights file {path} does not fit {name}: {first_line(err)}") from err


def weights_file(name: str, weights_path: str | None = None) -> Path:
    """The ImageNet weights file of ``name``, downloaded into the hub cache if missing and allowed.

    Cheap (no model is built): the train stage calls it before it creates any output or MLflow run.
    """
    path = Path(weights_path) if weights_path else cache_file(name)
    if not path.is_file():
        if weights_path:
            raise UserError(f"train.weights_path = {weights_path}: file not found; "
                            f"expected {name}'s ImageNet weights ({expected_file(name)}) there")
        _download(name, path)
    return path


def expected_file(name: str) -> str:
    """The torchvision file name of ``name``'s ImageNet weights, e.g. ``vit_b_16-c867db91.pth``."""
    s = spec(name)
    return os.path.basename(s.weights_url()) if s.weights else "(none: this model has no ImageNet weights)"


def _misfit(want: dict, got: dict) -> str:
    """Why state dict ``got`` does not load into a model whose state dict is ``want`` ('' if it does)."""
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    shape = [k for k in want if k in got and hasattr(got[k], "shape") and got[k].shape != want[k].shape]
    parts = [f"{len(keys)} {what} (e.g. {keys[0]!r})"
             for what, keys in (("missing keys", missing), ("unexpected keys", extra),
                                ("tensors of another shape", shape)) if keys]
    return ", ".join(parts)


DOWNLOAD_TIMEOUT_S = 20.0  # per connect / read: a firewalled machine fails in seconds, not hours


def _download(name: str, path: Path) -> None:
    import torch

    url = spec(name).weights_url()
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch.hub's urlopen has no timeout: without a socket default it can wait forever on a
    # network that drops packets instead of refusing them.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except Exception as err:  # noqa: BLE001 - offline: any network error means the same thing
        raise UserError(
            f"ImageNet weights for {name} not found at {path} and download failed "
            f"({first_line(err)}); put {path.name} (from {url}) in {path.parent} "
            "or set train.weights_path"
        ) from err
    finally:
        socket.setdefaulttimeout(previous)

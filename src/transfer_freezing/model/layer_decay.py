"""Layer-wise learning-rate decay as data: the optimiser's parameter groups, by parameter name.

Like the freeze families (``freezing``), the layers are module-name prefixes of the architecture's
parts (``registry.ModelSpec``), bottom-up: the stem, each block (ViT: encoder block; ResNet: stage
layer1..4), the head. With ``depth`` blocks, the lr multiplier of layer ``j`` (stem 0, block i at
i + 1, head depth + 1) is ``decay ** (depth + 1 - j)``: block i gets ``decay ** (depth - i)``, the
stem ``decay ** (depth + 1)`` and the head the full lr (BEiT's and timm's ``layer_decay``; timm's
``param_groups_layer_decay`` does this for timm's own models, this is the same idea over
torchvision's names). ``decay = 1`` is one group: the plain optimiser.

Which tail modules sit with the stem or with the head is data (``TAIL_LAYER``): ViT's class token
is an input embedding (with the patch and position embeddings, below block 0), its final
LayerNorm feeds the head (the head's layer, as in timm). Frozen parameters are in no group; a
layer with nothing trainable is left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError
from . import freezing
from . import registry as models

if TYPE_CHECKING:
    from torch import nn

OFF = 1.0  # train.layer_decay of a plain optimiser (one group)
# Per architecture family: the tail modules that belong to the stem's layer (the rest: the head's).
TAIL_LAYER: dict[str, tuple[str, ...]] = {"vit": ("class_token",), "resnet": ()}


@dataclass(frozen=True)
class Layer:
    """One parameter group: its name, the module-name prefixes it holds, and its lr multiplier."""

    name: str
    prefixes: tuple[str, ...]
    scale: float


def layers(model_name: str, decay: float) -> tuple[Layer, ...]:
    """The layers of ``model_name`` bottom-up (stem, block_00 ..., head) with their lr multipliers."""
    if not 0.0 < decay <= 1.0:
        raise UserError(f"train.layer_decay = {decay} is not allowed; use a number in (0, 1] (1 = off)")
    s = models.spec(model_name)
    low = tuple(t for t in s.tail if t in TAIL_LAYER[s.family])
    high = tuple(t for t in s.tail if t not in TAIL_LAYER[s.family])
    units = [("stem", s.stem + low), *((f"block_{i:02d}", (b,)) for i, b in enumerate(s.blocks)),
             ("head", (s.head, *high))]
    top = len(units) - 1  # depth + 1
    return tuple(Layer(name, prefixes, decay ** (top - j)) for j, (name, prefixes) in enumerate(units))


def param_groups(model: nn.Module, model_name: str, lr: float, decay: float) -> list[dict]:
    """The optimiser's parameter groups of ``model``'s trainable parameters: one per layer with
    ``lr * scale`` (keys ``params``, ``lr``, ``name``, ``scale``), or one group at ``decay = 1``."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if decay == OFF:
        return [{"params": [p for _, p in trainable], "lr": lr, "name": "all", "scale": 1.0}]
    groups, placed = [], set()
    for layer in layers(model_name, decay):
        params = [(n, p) for n, p in trainable if freezing.under(n, layer.prefixes)]
        placed.update(n for n, _ in params)
        if params:
            groups.append({"params": [p for _, p in params], "lr": lr * layer.scale, "name": layer.name,
                           "scale": layer.scale})
    stray = [n for n, _ in trainable if n not in placed]
    if stray:  # a part the registry does not name: a bug in ModelSpec, never silently at full lr
        raise ValueError(f"{model_name}: parameters in no layer: {', '.join(stray[:5])}")
    return groups


def describe(model_name: str, decay: float, lr: float = 1.0, mode: str = "freeze_none",
             num_classes: int = 10) -> list[dict]:
    """One row per parameter group of ``model_name`` under freeze ``mode`` (built on the meta
    device: shapes only): name, lr multiplier, lr, trainable parameters, module prefixes."""
    import torch

    with torch.device("meta"):
        net = models.build(model_name, num_classes)
    freezing.freeze(net, freezing.plan(model_name, mode), freeze_bn_stats=False)
    prefixes = {layer.name: layer.prefixes for layer in layers(model_name, decay)}
    return [{"group": g["name"], "scale": g["scale"], "lr": g["lr"],
             "trainable": sum(p.numel() for p in g["params"]),
             "prefixes": prefixes.get(g["name"], ("(every trainable parameter)",))}
            for g in param_groups(net, model_name, lr, decay)]

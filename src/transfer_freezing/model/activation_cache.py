"""Frozen-prefix activation cache: the part of a forward pass that is constant, computed once per split.

A model's forward is written here as a sequence of *stages* (the torchvision forward, cut at
module boundaries). A leading stage is *constant* when every parameter it uses is frozen and none
of its modules depends on train mode, the batch or the RNG (BatchNorm that is not frozen, dropout
with p > 0). Its output is then the same every epoch and for every seed that shares the frozen
weights, so it is computed once per split (eval mode, no_grad) and the run trains the remaining
stages on it. What is constant is decided from the frozen model itself, never from mode names:

- ViT ``freeze_patch_0_11`` (class token and final LayerNorm frozen too): every stage up to the
  head -> the cached input is the pre-head feature (hidden_dim floats per clip);
- ResNet modes with ``frozen_bn: eval``: stem + the frozen stages -> the last frozen stage's output;
- ViT ``freeze_patch`` and ``freeze_patch_0_<k>`` for k < 11: the class token is trainable and is
  mixed into every token by the first block's attention, so only the patch embedding is constant.
  Caching a stem alone is not worth its memory (``cache_depth``): these modes are not cached.
- The other strategy families (``freezing.FAMILIES``) follow from the same rule: the class-token-
  frozen prefixes (``freeze_patch_0_<k>_cls``) and late surgical ranges (``tune_9_11``: patch,
  tokens, blocks 0-8; ResNet ``tune_4`` with ``frozen_bn: eval``) have a constant prefix and are
  cached; BitFit (a trainable ``conv_proj.bias`` / stem BatchNorm), LayerNorm-only (block 0's
  norms) and early surgical ranges (``tune_0_2``) train something in the first block: not cached.

The key of a cached split hashes the frozen stages' weights and buffers, their names, the split's
stored images, the device type and precision, and the torch version, so a cache is shared by every
run (seed, sweep trial) whose frozen prefix is bitwise the same, and by no other.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from .. import atomic
from ..data.inputs import Split, to_model_input
from ..errors import UserError
from . import registry as models
from .freezing import under

FORMAT = 2  # bump when what a cache file holds changes (2: class-token-only last ViT block)
MEMORY_ENTRIES = 6  # cached splits kept in this process (two runs' train/val/test)
MEMORY_SHARE = 0.5  # a cache may take at most this share of the free host (or GPU) memory


@dataclass(frozen=True)
class Stage:
    """One piece of a model's forward: the module names it runs, and how to run it."""

    name: str
    owns: tuple[str, ...]
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    block: bool = False  # one of the spec's backbone blocks (the unit freeze modes count)


def _submodule(name: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.get_submodule(name)(x)


def _vit_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # VisionTransformer.forward + Encoder.forward up to the first block, op for op.
    x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
    return model.encoder.dropout(x + model.encoder.pos_embedding)


def _vit_pool(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.encoder.ln(x)[:, 0]


def _resnet_stem(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.maxpool(model.relu(model.bn1(model.conv1(x))))


def _resnet_pool(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(model.avgpool(x), 1)


def _vit_stages(s: models.ModelSpec) -> tuple[Stage, ...]:
    return (
        Stage("patch", ("conv_proj",), lambda m, x: m._process_input(x)),
        Stage("tokens", ("class_token", "encoder.pos_embedding", "encoder.dropout"), _vit_tokens),
        *_blocks(s),
        Stage("pool", ("encoder.ln",), _vit_pool),
        Stage("head", (s.head,), partial(_submodule, s.head)),
    )


def _timm_vit_tokens(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    # timm VisionTransformer.forward_features up to the first block, op for op.
    return model.norm_pre(model.patch_drop(model._pos_embed(x)))


def _timm_vit_pool(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.norm(x), pre_logits=True)  # pool, fc_norm, head_drop


def _timm_vit_stages(s: models.ModelSpec) -> tuple[Stage, ...]:
    """timm's VisionTransformer (DeiT) cut at the same boundaries as torchvision's."""
    return (
        Stage("patch", ("patch_embed",), partial(_submodule, "patch_embed")),
        Stage("tokens", ("cls_token", "pos_embed", "pos_drop", "patch_drop", "norm_pre"), _timm_vit_tokens),
        *_blocks(s),
        Stage("pool", ("norm", "fc_norm", "head_drop"), _timm_vit_pool),
        Stage("head", (s.head,), partial(_submodule, s.head)),
    )


def _resnet_stages(s: models.ModelSpec) -> tuple[Stage, ...]:
    return (
        Stage("stem", (*s.stem, "relu", "maxpool"), _resnet_stem),
        *_blocks(s),
        Stage("pool", ("avgpool",), _resnet_pool),
        Stage("head", (s.head,), partial(_submodule, s.head)),
    )


def _blocks(s: models.ModelSpec) -> tuple[Stage, ...]:
    return tuple(Stage(b, (b,), partial(_submodule, b), block=True) for b in s.blocks)


# By (family, impl): whose module layout the forward is cut in (``registry.ModelSpec.impl``).
FAMILY_STAGES: dict[tuple[str, str], Callable[[models.ModelSpec], tuple[Stage, ...]]] = {
    ("vit", "torchvision"): _vit_stages,
    ("vit", "timm"): _timm_vit_stages,
    ("resnet", "torchvision"): _resnet_stages,
}


def stages(model_name: str) -> tuple[Stage, ...]:
    """``model_name``'s forward as stages; running them in order is ``model(x)``."""
    s = models.spec(model_name)
    return FAMILY_STAGES[s.family, s.impl](s)


class Span(nn.Module):
    """Stages ``[start, stop)`` of ``model`` as one module (the model stays its only child)."""

    def __init__(self, model: nn.Module, parts: tuple[Stage, ...]):
        super().__init__()
        self.model = model
        self.parts = parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.parts:
            x = stage.run(self.model, x)
        return x


# --------------------------------------------------------------------------- what is constant

def _varies(module: nn.Module) -> bool:
    """Whether ``module``'s output depends on train mode, the batch or the RNG."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return True  # FrozenBatchNorm2d (frozen_bn: eval) is not a _BatchNorm
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p > 0
    if isinstance(module, nn.MultiheadAttention):
        return module.dropout > 0
    return False


def _constant(model: nn.Module, stage: Stage) -> bool:
    params = [p for n, p in model.named_parameters() if under(n, stage.owns)]
    modules = [m for n, m in model.named_modules() if under(n, stage.owns)]
    return not any(p.requires_grad for p in params) and not any(map(_varies, modules))


def constant_depth(model: nn.Module, parts: tuple[Stage, ...]) -> int:
    """How many leading stages of the (frozen) ``model`` give the same output every epoch."""
    depth = 0
    while depth < len(parts) and _constant(model, parts[depth]):
        depth += 1
    return depth


def cache_depth(model: nn.Module, parts: tuple[Stage, ...]) -> int:
    """Where to cache: after the constant prefix when it holds a backbone block, else 0 (no cache).

    A stem alone (ViT patch embedding, ResNet conv1) is a few per cent of a forward pass whose
    backward is skipped anyway, while its output is larger than the image. Measured on the 2-core
    CPU (benchmarks/train_throughput.py, 224 px): caching ViT-B/16's patch embedding changes a
    training step by -4 to +3 % (noise) for 574 MiB per 1,000 clips; ResNet-50's stem +1 % for
    766 MiB. (resnet_demo at 64 px gains 17 % from it: a toy whose stem is a large share.)
    """
    depth = constant_depth(model, parts)
    return depth if any(stage.block for stage in parts[:depth]) else 0


# --------------------------------------------------------------------------- computing and keying

@torch.no_grad()
def compute(prefix: Span, images: torch.Tensor, batch_size: int, device: torch.device,
            autocast: Callable[[], object]) -> torch.Tensor:
    """The prefix's output for every stored image, in eval mode, batch by batch."""
    was_training = prefix.training
    prefix.eval()
    out: torch.Tensor | None = None
    try:
        for start in range(0, len(images), batch_size):
            x = to_model_input(images[start:start + batch_size].to(device, non_blocking=True))
            with autocast():
                y = prefix(x)
            if out is None:
                out = torch.empty((len(images), *y.shape[1:]), dtype=y.dtype, device=device)
            out[start:start + len(y)] = y
    finally:
        prefix.train(was_training)
    return out


def _digest(h: hashlib._Hash, tensor: torch.Tensor) -> None:
    flat = tensor.detach().reshape(-1).contiguous().cpu()
    h.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
    h.update(flat.view(torch.uint8).numpy())


def prefix_key(prefix: Span, context: dict) -> str:
    """Hash of the frozen stages' names, weights and buffers, and ``context`` (device, precision...)."""
    h = hashlib.sha256()
    owns = tuple(name for stage in prefix.parts for name in stage.owns)
    meta = {"format": FORMAT, "torch": torch.__version__, "stages": [s.name for s in prefix.parts],
            **context}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name, tensor in sorted(prefix.model.state_dict().items()):
        if under(name, owns):
            h.update(name.encode())
            _digest(h, tensor)
    return h.hexdigest()


def split_key(prefix_digest: str, images: torch.Tensor) -> str:
    h = hashlib.sha256(prefix_digest.encode())
    _digest(h, images)
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------- storage

_MEMORY: OrderedDict[str, torch.Tensor] = OrderedDict()


def _remember(key: str, value: torch.Tensor) -> torch.Tensor:
    _MEMORY[key] = value
    _MEMORY.move_to_end(key)
    while len(_MEMORY) > MEMORY_ENTRIES:
        _MEMORY.popitem(last=False)
    return value


def fetch(key: str, folder: Path | None, device: torch.device,
          make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The cached tensor for ``key``: from this process, else ``folder``, else ``make()`` (then kept)."""
    if key in _MEMORY:
        _MEMORY.move_to_end(key)
        return _MEMORY[key].to(device)
    path = folder / f"{key}.pt" if folder else None
    if path and path.is_file():
        try:
            return _remember(key, torch.load(path, map_location=device, weights_only=True))
        except (RuntimeError, OSError, EOFError) as err:
            print(f"activation cache: ignoring unreadable {path} ({type(err).__name__}); recomputing")
    value = make()
    if path:
        _store(path, value)
    return _remember(key, value)


def _store(path: Path, value: torch.Tensor) -> None:
    try:
        with atomic.atomic_path(path) as tmp:
            torch.save(value.cpu(), tmp)
    except (OSError, RuntimeError, UserError) as err:  # a cache is an optimisation: go on without
        print(f"activation cache: not shared, writing {path} failed ({err})")


def clear_memory() -> None:
    """Forget the in-process cache (tests and benchmarks compare cold and warm paths)."""
    _MEMORY.clear()


def free_bytes(device: torch.device) -> int:
    """Free memory where a cache on ``device`` lives (GPU memory, or the host's MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: do not refuse


def clip_bytes(prefix: Span, image: torch.Tensor, device: torch.device,
               autocast: Callable[[], object]) -> int:
    """Bytes one clip's cached activation takes (one forward of the prefix on one image)."""
    y = compute(prefix, image[:1], 1, device, autocast)
    return y.element_size() * y[0].numel()


def prepare(model: nn.Module, model_name: str, splits: dict[str, Split], batch_size: int,
            device: torch.device, autocast: Callable[[], object], folder: Path | None,
            context: dict) -> tuple[Span, dict[str, Split]] | None:
    """(trainable rest of the model, splits holding the prefix's outputs), or None when not cached.

    None when no constant prefix holds a backbone block, or when the cache would take more than
    ``MEMORY_SHARE`` of the free memory on ``device``. ``folder`` (None: this process only) is
    where caches are shared between runs; ``context`` enters the key (device, precision, ...).
    """
    parts = stages(model_name)
    depth = cache_depth(model, parts)
    if not depth:
        return None
    prefix, rest = Span(model, parts[:depth]), Span(model, parts[depth:])
    clips = sum(len(s) for s in splits.values())
    need = clips * clip_bytes(prefix, next(iter(splits.values())).images, device, autocast)
    if need > MEMORY_SHARE * free_bytes(device):
        print(f"activation cache: skipped, {need / 2**20:,.0f} MiB for {clips} clips would take more "
              f"than {MEMORY_SHARE:.0%} of the free memory on {device.type}")
        return None
    digest = prefix_key(prefix, context)
    cached = {name: Split(fetch(split_key(digest, s.images), folder, device,
                                partial(compute, prefix, s.images, batch_size, device, autocast)),
                          s.labels, s.clip_ids)
              for name, s in splits.items()}
    print(f"activation cache: stages up to {parts[depth - 1].name} are constant; "
          f"{need / 2**20:,.2f} MiB for {clips} clips, training the remaining {len(rest.parts)}")
    return rest, cached

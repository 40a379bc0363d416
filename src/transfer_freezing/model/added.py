"""Parts the parameter-efficient families add to a frozen ViT: LoRA, bottleneck adapters, prompts.

Each is a small module of this project's own, attached to torchvision's ``VisionTransformer``
(or timm's, DeiT-B/16: ``SITES`` holds where each part goes in either layout) without forking it
(``attach``), after the backbone is frozen, so only the added parameters and
the head train:

- **LoRA** (Hu et al. 2022): a ``torch.nn.utils.parametrize`` parametrization of a weight,
  ``W -> W + (alpha / r) B A`` on chosen row slices. torchvision packs q, k, v in one
  ``in_proj_weight`` (3E x E) of ``nn.MultiheadAttention``; the update goes to the q and v
  slices (the LoRA paper's choice), optionally to the MLP's two ``Linear`` weights. ``A`` is
  Kaiming-uniform, ``B`` zero: the function is unchanged at step 0. ``merge`` folds the update
  into plain weights (``load_model`` returns the merged model; evaluation passes run under
  ``parametrize.cached()``, the merged weight computed once per pass).
- **Bottleneck adapters**: ``x + up(GELU(down(x)))`` of width w with ``up`` zero-initialised
  (the function is unchanged at step 0), run on the attention sub-layer's output (Houlsby et al.
  2019: after attention and after the MLP) or after the MLP only (Pfeiffer et al. 2021), before
  the residual sum, through forward hooks on the block's ``dropout`` and ``mlp`` modules.
- **Visual prompt tuning** (Jia et al. 2022): p learnable tokens inserted after the class token
  at the input of block 0 (shallow), or at every block, replacing the previous block's prompt
  outputs (deep), through forward pre-hooks on the blocks. The class token is still what the
  head reads.

Why not the ``peft`` library: its LoRA for ``nn.MultiheadAttention`` updates the whole packed
in-projection and the out-projection (no q/v slices), merges and unmerges the weights around
every forward call, and wraps the module (renaming its state-dict keys); it has no bottleneck
adapters, and its prompt tuning is for ``transformers`` models. Forty lines of parametrization and
hooks keep torchvision's module names, so lean checkpoints, the frozen-weights hash and the
activation cache work on them unchanged.

The added modules are children of the block they act in, named ``lora_a`` / ``lora_b`` (inside
the parametrization), ``adapter_attn`` / ``adapter_mlp`` and ``prompt``: ``freezing.ADDED`` tells
them from the backbone's own parameters by these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import attention, freezing
from . import registry as models
from .freezing import Addition

Slices = tuple[tuple[int, int, int], ...]  # row slices (i, j, parts): rows n*i/parts .. n*j/parts


@dataclass(frozen=True)
class Sites:
    """Where the added parts go in one ViT block, by the module layout (``ModelSpec.impl``).

    ``lora_attn`` / ``lora_mlp``: LoRA's targets (module, weight, row slices); q, k, v are packed
    as [q; k; v] rows in both libraries, so q and v are the first and last thirds. ``after_attn``
    / ``after_mlp``: the module whose output an adapter rewrites (the attention sub-layer's and the
    MLP's, before the residual sum); ``norm``: a parameter whose shape and device the added parts
    take (the width E)."""

    lora_attn: tuple[tuple[str, str, Slices], ...]
    lora_mlp: tuple[tuple[str, str, Slices], ...]
    after_attn: str
    after_mlp: str
    norm: str


QV: Slices = ((0, 1, 3), (2, 3, 3))
WHOLE: Slices = ((0, 1, 1),)
SITES: dict[str, Sites] = {
    # torchvision EncoderBlock: ln_1, self_attention (packed in_proj_weight), dropout, ln_2, mlp (0, 3)
    "torchvision": Sites((("self_attention", "in_proj_weight", QV),),
                         (("mlp.0", "weight", WHOLE), ("mlp.3", "weight", WHOLE)),
                         after_attn="dropout", after_mlp="mlp", norm="ln_1.weight"),
    # timm Block (DeiT): norm1, attn (qkv Linear, proj), ls1, norm2, mlp (fc1, fc2), ls2
    "timm": Sites((("attn.qkv", "weight", QV),),
                  (("mlp.fc1", "weight", WHOLE), ("mlp.fc2", "weight", WHOLE)),
                  after_attn="attn", after_mlp="mlp", norm="norm1.weight"),
}
# Adapter modules per placement, and which site each rewrites.
ADAPTER_SITES: dict[str, tuple[tuple[str, str], ...]] = {
    "houlsby": (("adapter_attn", "after_attn"), ("adapter_mlp", "after_mlp")),
    "pfeiffer": (("adapter_mlp", "after_mlp"),),
}


class LoRA(nn.Module):
    """Parametrization ``W -> W + scale * B_i A_i`` on row slices ``rows`` of ``W`` (one pair per slice)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, rows: tuple[tuple[int, int], ...]):
        super().__init__()
        out, fan_in = weight.shape
        sizes = {b - a for a, b in rows}
        assert len(sizes) == 1, "LoRA slices must have one size"
        self.rows, self.scale, self.out = rows, alpha / rank, out
        kw = {"device": weight.device, "dtype": weight.dtype}
        self.lora_a = nn.Parameter(torch.empty(len(rows), rank, fan_in, **kw))
        self.lora_b = nn.Parameter(torch.zeros(len(rows), sizes.pop(), rank, **kw))
        for a in self.lora_a:  # nn.Linear's (and LoRA's reference code's) init, per slice
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))

    def delta(self) -> torch.Tensor:
        """The full-size update ``scale * B A`` (zero outside the slices)."""
        updates = self.scale * (self.lora_b @ self.lora_a)
        pieces, at = [], 0
        for (a, b), update in zip(self.rows, updates, strict=True):
            if a > at:
                pieces.append(updates.new_zeros(a - at, updates.shape[-1]))
            pieces.append(update)
            at = b
        if at < self.out:
            pieces.append(updates.new_zeros(self.out - at, updates.shape[-1]))
        return torch.cat(pieces)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


class Adapter(nn.Module):
    """Bottleneck adapter ``x + up(GELU(down(x)))``; ``up`` starts at zero (identity at step 0)."""

    def __init__(self, dim: int, width: int, like: torch.Tensor):
        super().__init__()
        kw = {"device": like.device, "dtype": like.dtype}
        self.down = nn.Linear(dim, width, **kw)
        self.act = nn.GELU()
        self.up = nn.Linear(width, dim, **kw)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))

    def after(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """Forward hook: the adapter applied to ``module``'s output."""
        return self(output)


class Prompt(nn.Module):
    """``p`` learnable tokens put after the class token of a block's input (inserted, or replacing
    the ``p`` prompt outputs of the previous block when ``replace``)."""

    def __init__(self, count: int, dim: int, patch: int, replace: bool, like: torch.Tensor):
        super().__init__()
        self.replace = replace
        self.tokens = nn.Parameter(torch.empty(count, dim, device=like.device, dtype=like.dtype))
        bound = math.sqrt(6.0 / (3 * patch * patch + dim))  # VPT's Xavier-uniform over the patch dims
        nn.init.uniform_(self.tokens, -bound, bound)

    def before(self, module: nn.Module, args: tuple) -> tuple:
        """Forward pre-hook of a block: its (B, L, E) input with the prompt tokens after the class token."""
        x = args[0]
        tokens = self.tokens.to(x.dtype).expand(x.shape[0], -1, -1)
        rest = x[:, 1 + len(self.tokens):] if self.replace else x[:, 1:]
        return (torch.cat([x[:, :1], tokens, rest], dim=1), *args[1:])


def attach(model: nn.Module, model_name: str, addition: Addition) -> int:
    """Add ``addition``'s modules to the (frozen) ViT ``model`` in place; returns the parameters added."""
    s = models.spec(model_name)
    before = sum(p.numel() for p in model.parameters())
    ATTACH[addition.method](model, s, addition)
    return sum(p.numel() for p in model.parameters()) - before


def _patch_size(model: nn.Module) -> int:
    """The patch side: torchvision's ``patch_size``, timm's ``patch_embed.patch_size`` (a pair)."""
    size = getattr(model, "patch_size", None) or model.patch_embed.patch_size
    return size if isinstance(size, int) else size[0]


def _lora(model: nn.Module, s: models.ModelSpec, a: Addition) -> None:
    sites = SITES[s.impl]
    targets = sites.lora_attn + (sites.lora_mlp if a.variant == "attn_mlp" else ())
    for block in s.blocks:
        for module_name, weight_name, slices in targets:
            module = model.get_submodule(f"{block}.{module_name}")
            if type(module) is nn.MultiheadAttention and attention._convertible(module):
                # the batch-first layout first (same maths and keys): the parametrized class keeps it
                module.__class__ = attention.BatchFirstSelfAttention
            weight = getattr(module, weight_name)
            n = weight.shape[0]
            rows = tuple((n * i // parts, n * j // parts) for i, j, parts in slices)
            parametrize.register_parametrization(module, weight_name, LoRA(weight, a.size, a.alpha, rows))


def _adapter(model: nn.Module, s: models.ModelSpec, a: Addition) -> None:
    sites = SITES[s.impl]
    for block_name in s.blocks:
        block = model.get_submodule(block_name)
        like = block.get_parameter(sites.norm)
        for name, site in ADAPTER_SITES[a.variant]:
            adapter = Adapter(like.shape[0], a.size, like)
            block.add_module(name, adapter)
            block.get_submodule(getattr(sites, site)).register_forward_hook(adapter.after)


def _prompt(model: nn.Module, s: models.ModelSpec, a: Addition) -> None:
    blocks = s.blocks if a.variant == "deep" else s.blocks[:1]
    for i, block_name in enumerate(blocks):
        block = model.get_submodule(block_name)
        like = block.get_parameter(SITES[s.impl].norm)
        prompt = Prompt(a.size, like.shape[0], _patch_size(model), replace=i > 0, like=like)
        block.add_module("prompt", prompt)
        block.register_forward_pre_hook(prompt.before)


ATTACH = {"lora": _lora, "adapter": _adapter, "prompt": _prompt}


def merge(model: nn.Module) -> int:
    """Fold every LoRA update of ``model`` into its plain weight (in place); returns how many.

    The weights keep torchvision's names and the model computes the same function without the
    parametrization (LoRA's zero-latency inference).
    """
    found = [(m, name) for m in model.modules() if parametrize.is_parametrized(m)
             for name, plist in m.parametrizations.items() if any(isinstance(p, LoRA) for p in plist)]
    for module, name in found:
        # parametrize keeps the weight's property on a class made for the module, which a deepcopy
        # shares with its original; removal deletes it from the class: give the module its own first
        cls = module.__class__
        module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
        parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return len(found)


def evaluation() -> object:
    """Context of an evaluation pass: each LoRA-merged weight computed once, not per batch."""
    return parametrize.cached()


def apply(model: nn.Module, plan: freezing.FreezePlan, model_name: str, freeze_bn_stats: bool = True
          ) -> tuple[int, int]:
    """``freeze`` by ``plan``, then add its family's trainable modules (``attach``), if any.

    Returns (trainable, total) parameter counts with the added parts.
    """
    trainable, total = freezing.freeze(model, plan, freeze_bn_stats)
    if plan.adds is None:
        return trainable, total
    extra = attach(model, model_name, plan.adds)
    return trainable + extra, total + extra

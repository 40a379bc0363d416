"""Freeze strategies as data: families of rules over parameter names, and the helper that applies them.

A *mode* names one strategy (``freeze_patch_0_5``, ``tune_0_2``, ``bitfit`` ...). A *family* is a
grammar for mode names plus a builder that turns the numbers in a name and the architecture's parts
(``registry.ModelSpec``: stem, blocks, tail, head) into a ``Rule``:

- ``freeze``: module-name prefixes whose parameters are frozen;
- ``keep_params`` / ``keep_kinds``: what stays trainable inside them anyway, by parameter name
  (a regular expression, e.g. every ``...bias``) or by the kind of module that owns the parameter
  (LayerNorm, BatchNorm).

- ``adds``: modules the family adds to the frozen backbone (``Addition``: LoRA, bottleneck
  adapters, visual prompts; built by ``added.attach`` after freezing, so they are what trains).

The head is never frozen. A rule without exceptions is its own list of prefixes (the prefix and
surgical families); a rule with exceptions is resolved once on the architecture's parameter names
(built on the meta device: no memory, no weights) into the module and parameter names that cover
exactly the frozen parameters. Either way ``FreezePlan.prefixes`` is the exact frozen set, so
``freeze(model, plan.prefixes)`` applies every family, and a module whose parameters are all
frozen is always under one of the prefixes (that is what swaps its BatchNorm for
``FrozenBatchNorm2d``). Which leading part of the forward pass is then constant (and may be
cached) is decided from the frozen model itself, not from the mode's name: see
``activation_cache``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from ..errors import UserError
from . import registry as models

if TYPE_CHECKING:  # torch is imported where a model is touched: naming and checking modes need none
    from torch import nn
    from torchvision.ops import FrozenBatchNorm2d


@dataclass(frozen=True)
class Addition:
    """What a parameter-efficient family adds to every (or the first) block: ``method`` (``lora``,
    ``adapter``, ``prompt``), ``size`` (rank r, width w, prompt count p), ``variant`` (``attn`` or
    ``attn_mlp``; ``houlsby`` or ``pfeiffer``; ``shallow`` or ``deep``), ``alpha`` (LoRA's scale
    numerator: the update is ``alpha / r * B A``)."""

    method: str
    size: int
    variant: str
    alpha: float = 0.0

    def blocks(self, blocks: tuple[str, ...]) -> tuple[str, ...]:
        """The blocks it acts in: shallow prompts the first one, everything else all of them."""
        return blocks[:1] if self.variant == "shallow" else blocks


# Names of the parameters the families add (``added``'s modules); never a torchvision name.
ADDED = re.compile(r"(?:^|\.)(?:lora_a|lora_b|adapter_attn|adapter_mlp|prompt)(?:\.|$)")


def added(name: str) -> bool:
    """Whether the parameter or state-dict key ``name`` belongs to a part a family added."""
    return ADDED.search(name) is not None


@dataclass(frozen=True)
class Rule:
    """Which parameters one mode freezes, as data over parameter names."""

    freeze: tuple[str, ...]
    keep_params: str = ""  # re.search over a parameter's full name: stays trainable
    keep_kinds: tuple[str, ...] = ()  # parameters owned by these torch.nn classes stay trainable
    adds: Addition | None = None  # trainable modules added after freezing (parameter-efficient families)

    @property
    def exact(self) -> bool:
        """Whether ``freeze`` alone is the frozen set (no exceptions to resolve on the model)."""
        return not self.keep_params and not self.keep_kinds


@dataclass(frozen=True)
class Family:
    """A family of modes: a name grammar and the rule each name means on one architecture family."""

    name: str
    grammar: str  # re.fullmatch over the mode name
    syntax: str  # how to write the modes, for messages
    trains: str  # what stays trainable, in words
    rule: Callable[[models.ModelSpec, re.Match], Rule | None]  # None: numbers out of range
    listed: Callable[[models.ModelSpec], tuple[str, ...]]  # the modes ``modes()`` lists


@dataclass(frozen=True)
class FreezePlan:
    """What one mode freezes on one model.

    ``prefixes`` are module or parameter names covering exactly the frozen parameters;
    ``frozen_blocks`` is how many backbone blocks are frozen whole; ``family`` the mode's family.
    """

    mode: str
    prefixes: tuple[str, ...]
    frozen_blocks: int
    family: str = "prefix"
    trains: str = ""
    adds: Addition | None = None

    def frozen(self, name: str) -> bool:
        """Whether the parameter ``name`` is frozen under this plan (added parts never are)."""
        return under(name, self.prefixes) and not added(name)


# --------------------------------------------------------------------------- the parts a rule names

def _everything(s: models.ModelSpec) -> tuple[str, ...]:
    """Every module prefix of the backbone (all but the head)."""
    return s.stem + s.blocks + s.tail


def _units(s: models.ModelSpec) -> tuple[tuple[str, ...], ...]:
    """The numbered units of mode names: ViT blocks 0..11; ResNet 0 = stem, 1..4 = layer1..4."""
    blocks = tuple((b,) for b in s.blocks)
    return blocks if s.family == "vit" else (s.stem, *blocks)


def _unit_range(s: models.ModelSpec, first: str, last: str | None) -> tuple[int, int] | None:
    a, b = int(first), int(last if last is not None else first)
    return (a, b) if a <= b < len(_units(s)) else None


# --------------------------------------------------------------------------- the families

def _vit_prefix(s: models.ModelSpec, m: re.Match) -> Rule | None:
    """``freeze_none``; ``freeze_patch`` (k = -1); ``freeze_patch_0_<k>``: patch + blocks 0..k."""
    if m[0] == "freeze_none":
        return Rule(())
    last = int(m[1]) if m[1] is not None else -1
    if last >= len(s.blocks):
        return None
    frozen = s.stem + s.blocks[: last + 1]
    if last == len(s.blocks) - 1:
        # The original's "0_11" froze the whole backbone (class token and final norm too):
        # a linear probe on the head, 7,690 trainable parameters for ViT-B/16.
        frozen += s.tail
    return Rule(frozen)


def _vit_prefix_cls(s: models.ModelSpec, m: re.Match) -> Rule | None:
    """The prefix mode with the class token frozen as well."""
    base = _vit_prefix(s, m)
    return None if base is None else Rule(tuple(dict.fromkeys((*base.freeze, s.class_token))))


def _resnet_prefix(s: models.ModelSpec, m: re.Match) -> Rule | None:
    """``freeze_none``; ``freeze_0`` (stem), ``freeze_0_1`` (+ layer1) ... ``freeze_0_1_2_3_4``."""
    if m[0] == "freeze_none":
        return Rule(())
    stages = [int(i) for i in m[0].removeprefix("freeze_").split("_")]
    if stages != list(range(len(stages))) or len(stages) > len(_units(s)):
        return None
    return Rule(tuple(name for unit in _units(s)[: len(stages)] for name in unit))


def _surgical(s: models.ModelSpec, m: re.Match) -> Rule | None:
    """``tune_<a>_<b>``: units a..b and the head trainable, everything else frozen."""
    span = _unit_range(s, m[1], m[2])
    if span is None:
        return None
    trained = {name for unit in _units(s)[span[0]: span[1] + 1] for name in unit}
    return Rule(tuple(name for name in _everything(s) if name not in trained))


def _bitfit(s: models.ModelSpec, m: re.Match) -> Rule:
    """ViT: every bias (``...bias``, attention's ``in_proj_bias``) and the head (Zaken et al.)."""
    return Rule(_everything(s), keep_params=r"bias$")


def _bitfit_bn(s: models.ModelSpec, m: re.Match) -> Rule:
    """ResNet (no biases in its convolutions): BatchNorm's affine weight and bias, and ``fc``."""
    return Rule(_everything(s), keep_kinds=("modules.batchnorm._BatchNorm",))


def _layernorm(s: models.ModelSpec, m: re.Match) -> Rule:
    return Rule(_everything(s), keep_kinds=("LayerNorm",))


LORA_ALPHA = 8  # LoRA's alpha when the name gives none: fixed across ranks, so alpha / r scales the update


def _lora(s: models.ModelSpec, m: re.Match) -> Rule | None:
    """``lora_r<r>[_a<alpha>][_mlp]``: the backbone frozen, rank-r updates of q and v (+ the MLP)."""
    rank, alpha = int(m[1]), float(m[2]) if m[2] is not None else LORA_ALPHA
    if rank < 1 or alpha <= 0:
        return None
    return Rule(_everything(s), adds=Addition("lora", rank, "attn_mlp" if m[3] else "attn", alpha))


def _adapter(s: models.ModelSpec, m: re.Match) -> Rule | None:
    """``adapter_houlsby_w<w>`` (after attention and MLP), ``adapter_pfeiffer_w<w>`` (after the MLP)."""
    width = int(m[2])
    return Rule(_everything(s), adds=Addition("adapter", width, m[1])) if width >= 1 else None


def _prompt(s: models.ModelSpec, m: re.Match) -> Rule | None:
    """``vpt_shallow_p<p>`` (p tokens at the input), ``vpt_deep_p<p>`` (p tokens at every block)."""
    count = int(m[2])
    return Rule(_everything(s), adds=Addition("prompt", count, m[1])) if count >= 1 else None


def _vit_prefix_listed(s: models.ModelSpec) -> tuple[str, ...]:
    return ("freeze_none", "freeze_patch", *(f"freeze_patch_0_{k}" for k in range(len(s.blocks))))


def _vit_cls_listed(s: models.ModelSpec) -> tuple[str, ...]:
    # The original's depths; 0_<last> already freezes the class token (it equals freeze_patch_0_<last>).
    return ("freeze_patch_cls", *(f"freeze_patch_0_{k}_cls" for k in range(2, len(s.blocks) - 1, 3)))


def _resnet_prefix_listed(s: models.ModelSpec) -> tuple[str, ...]:
    return ("freeze_none", *("freeze_" + "_".join(map(str, range(d + 1))) for d in range(len(_units(s)))))


def _surgical_listed(s: models.ModelSpec) -> tuple[str, ...]:
    if s.family == "vit":  # thirds of ... quarters: 0_2, 3_5, 6_8, 9_11 for 12 blocks
        return tuple(f"tune_{a}_{min(a + 2, len(s.blocks) - 1)}" for a in range(0, len(s.blocks), 3))
    return tuple(f"tune_{i}" for i in range(1, len(_units(s))))


def _one(name: str) -> Callable[[models.ModelSpec], tuple[str, ...]]:
    return lambda s: (name,)


def _listed(*names: str) -> Callable[[models.ModelSpec], tuple[str, ...]]:
    return lambda s: names


_SURGICAL_GRAMMAR = r"tune_(\d+)(?:_(\d+))?"

FAMILIES: dict[str, tuple[Family, ...]] = {
    "vit": (
        Family("prefix", r"freeze_none|freeze_patch(?:_0_(\d+))?",
               "freeze_none, freeze_patch, freeze_patch_0_<k> (k 0-{last})",
               "everything after the frozen prefix", _vit_prefix, _vit_prefix_listed),
        Family("prefix_cls", r"freeze_patch(?:_0_(\d+))?_cls",
               "freeze_patch[_0_<k>]_cls (class token frozen too)",
               "everything after the frozen prefix but the class token", _vit_prefix_cls, _vit_cls_listed),
        Family("surgical", _SURGICAL_GRAMMAR, "tune_<a>[_<b>] (blocks a-b + head, 0-{last})",
               "blocks a..b + head", _surgical, _surgical_listed),
        Family("bitfit", "bitfit", "bitfit", "all biases + head", _bitfit, _one("bitfit")),
        Family("layernorm", "layernorm", "layernorm", "all LayerNorm weights and biases + head",
               _layernorm, _one("layernorm")),
        Family("lora", r"lora_r(\d+)(?:_a(\d+))?(_mlp)?",
               "lora_r<r>[_a<alpha>][_mlp] (alpha 8 by default)",
               "rank-r LoRA of q and v in every block (+ MLP with _mlp), scale alpha/r, + head",
               _lora, _listed("lora_r4", "lora_r16", "lora_r4_mlp")),
        Family("adapter", r"adapter_(houlsby|pfeiffer)_w(\d+)", "adapter_houlsby_w<w>, adapter_pfeiffer_w<w>",
               "width-w bottleneck adapters (houlsby: after attention and MLP; pfeiffer: after MLP) + head",
               _adapter, _listed("adapter_houlsby_w16", "adapter_houlsby_w64", "adapter_pfeiffer_w16",
                                 "adapter_pfeiffer_w64")),
        Family("vpt", r"vpt_(shallow|deep)_p(\d+)", "vpt_shallow_p<p>, vpt_deep_p<p>",
               "p prompt tokens (shallow: at the input; deep: at every block) + head",
               _prompt, _listed("vpt_shallow_p10", "vpt_deep_p10")),
    ),
    "resnet": (
        Family("prefix", r"freeze_none|freeze_0(?:_\d+)*",
               "freeze_none, freeze_0, freeze_0_1, ..., freeze_0_1_2_3_4",
               "everything after the frozen stages", _resnet_prefix, _resnet_prefix_listed),
        Family("surgical", _SURGICAL_GRAMMAR,
               "tune_<a>[_<b>] (stages a-b + fc; 0 = stem, 1-{last} = layer1-4)", "stages a..b + fc",
               _surgical, _surgical_listed),
        Family("bitfit", "bitfit", "bitfit", "all BatchNorm affine weights and biases + fc",
               _bitfit_bn, _one("bitfit")),
    ),
}

# Modes of another architecture family's grammar, and why they do not apply here.
NOT_APPLICABLE: dict[str, tuple[tuple[str, str], ...]] = {
    "resnet": (
        ("layernorm", "ResNet has no LayerNorm (its norms are BatchNorm: 'bitfit' trains their affine)"),
        (r".*_cls", "ResNet has no class token"),
        (r"lora_.*", "LoRA is defined here on attention projections, and a ResNet has none"),
        (r"adapter_.*", "bottleneck adapters sit after a transformer block's attention and MLP, "
                        "which a ResNet has not"),
        (r"vpt_.*", "visual prompts are tokens, and a ResNet has no token sequence"),
    ),
    "vit": (),
}


# --------------------------------------------------------------------------- plans

def modes(model_name: str) -> tuple[str, ...]:
    """The listed modes of ``model_name``, family by family (the grammars accept more, e.g. any k)."""
    s = models.spec(model_name)
    return tuple(mode for family in FAMILIES[s.family] for mode in family.listed(s))


def family_of(model_name: str, mode: str) -> str:
    return plan(model_name, mode).family


def plan(model_name: str, mode: str) -> FreezePlan:
    return _plan(model_name, mode)


def check(model_name: str, mode: str) -> None:
    """One line if ``mode`` is not a mode of ``model_name`` (names only: no model is built)."""
    _rule(model_name, mode)


def _rule(model_name: str, mode: str) -> tuple[Family, Rule]:
    """The family whose grammar ``mode`` matches and its rule on ``model_name``, else one line."""
    s = models.spec(model_name)
    for family in FAMILIES[s.family]:
        match = re.fullmatch(family.grammar, mode)
        if not match:
            continue
        rule = family.rule(s, match)
        if rule is None:
            break
        return family, rule
    for grammar, why in NOT_APPLICABLE[s.family]:
        if re.fullmatch(grammar, mode):
            raise UserError(f"freeze mode {mode!r} does not apply to {model_name}: {why}; "
                            f"valid: {valid(model_name)}")
    raise _unknown(model_name, mode)


@lru_cache(maxsize=512)
def _plan(model_name: str, mode: str) -> FreezePlan:
    s = models.spec(model_name)
    family, rule = _rule(model_name, mode)
    frozen = rule.freeze if rule.exact else _resolve(s, rule)
    touched = rule.adds.blocks(s.blocks) if rule.adds else ()
    blocks = sum(under(b, frozen) and b not in touched for b in s.blocks)
    return FreezePlan(mode, frozen, blocks, family.name, family.trains, rule.adds)


def prefixes(model_name: str, mode: str) -> tuple[str, ...]:
    return plan(model_name, mode).prefixes


def valid(model_name: str) -> str:
    """The mode grammars of ``model_name``, in words."""
    s = models.spec(model_name)
    last = len(_units(s)) - 1
    return ", ".join(f.syntax.format(last=last) for f in FAMILIES[s.family])


def _unknown(model_name: str, mode: str) -> UserError:
    return UserError(f"unknown freeze mode {mode!r} for {model_name}; valid: {valid(model_name)}")


def _resolve(s: models.ModelSpec, rule: Rule) -> tuple[str, ...]:
    """Module and parameter names covering exactly the parameters ``rule`` freezes on ``s``."""
    import torch

    with torch.device("meta"):
        net = s.build(224)
    kinds = tuple(_nn_class(kind) for kind in rule.keep_kinds)
    owner = {f"{prefix}.{leaf}" if prefix else leaf: module
             for prefix, module in net.named_modules() for leaf, _ in module.named_parameters(recurse=False)}
    pattern = re.compile(rule.keep_params) if rule.keep_params else None
    frozen = {name for name, module in owner.items()
              if under(name, rule.freeze) and not isinstance(module, kinds)
              and not (pattern and pattern.search(name))}
    out: list[str] = []

    def cover(prefix: str, module: nn.Module) -> None:
        names = [f"{prefix}.{n}" for n, _ in module.named_parameters()]
        if names and all(n in frozen for n in names):
            out.append(prefix)  # the whole module: its BatchNorm may become FrozenBatchNorm2d
            return
        out.extend(n for n in (f"{prefix}.{leaf}" for leaf, _ in module.named_parameters(recurse=False))
                   if n in frozen)
        for child, sub in module.named_children():
            cover(f"{prefix}.{child}", sub)

    out.extend(name for name, _ in net.named_parameters(recurse=False) if name in frozen)
    for child, sub in net.named_children():
        cover(child, sub)
    return tuple(out)


# --------------------------------------------------------------------------- applying a plan

def freeze(
    model: nn.Module, prefixes: tuple[str, ...] | FreezePlan, freeze_bn_stats: bool = True
) -> tuple[int, int]:
    """Stop gradients for every parameter under ``prefixes`` (timm's ``freeze``, by name).

    ``prefixes`` may be a ``FreezePlan`` (its exact frozen set). With ``freeze_bn_stats`` the
    BatchNorm layers inside frozen modules are swapped for torchvision's ``FrozenBatchNorm2d``, so
    their running statistics stop too; without it they keep updating in train mode, which is what
    the original study did. A BatchNorm with a trainable affine (``bitfit``) is never swapped.
    Returns (trainable, total) parameter counts, taken before any BatchNorm swap.
    """
    if isinstance(prefixes, FreezePlan):
        prefixes = prefixes.prefixes
    for name, param in model.named_parameters():
        if under(name, prefixes):
            param.requires_grad_(False)
    counts = count(model)
    if freeze_bn_stats:
        from torch import nn

        for name, module in list(model.named_modules()):
            if isinstance(module, nn.BatchNorm2d) and under(name, prefixes):
                _swap(model, name, _frozen_copy(module))
    return counts


def backbone(model_name: str) -> tuple[str, ...]:
    """Every module prefix of ``model_name`` but the head: what a linear probe (LP-FT) freezes."""
    return _everything(models.spec(model_name))


def freeze_reversibly(model: nn.Module, prefixes: tuple[str, ...], freeze_bn_stats: bool = True
                      ) -> Callable[[], None]:
    """``freeze`` for a while: returns the function that gives back every parameter's
    ``requires_grad`` and every swapped BatchNorm module (the same objects, so the optimiser of a
    later phase sees the model as it was built). LP-FT's head-only phase runs between the two."""
    from torch import nn

    grads = {name: p.requires_grad for name, p in model.named_parameters()}
    swapped = [(name, module) for name, module in model.named_modules()
               if freeze_bn_stats and isinstance(module, nn.BatchNorm2d) and under(name, prefixes)]
    freeze(model, prefixes, freeze_bn_stats)

    def undo() -> None:
        for name, module in swapped:
            _swap(model, name, module)
        for name, p in model.named_parameters():
            p.requires_grad_(grads[name])

    return undo


def _frozen_copy(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    from torchvision.ops import FrozenBatchNorm2d

    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    frozen.load_state_dict(bn.state_dict())  # drops num_batches_tracked
    return frozen.to(bn.weight.device)


def _nn_class(path: str) -> type:
    """``torch.nn`` class by dotted name (``"LayerNorm"``, ``"modules.batchnorm._BatchNorm"``)."""
    from torch import nn

    found = nn
    for part in path.split("."):
        found = getattr(found, part)
    return found


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

"""``tfreeze models``: the architectures and freeze strategies, with exact trainable counts and shares."""

from __future__ import annotations

import torch

from . import freezing, layer_decay
from . import registry as models


def rows(model_name: str, num_classes: int = 10) -> list[dict]:
    """One row per listed freeze mode of ``model_name``: family, frozen names, trainable count, share.

    The model is built on the meta device (shapes only, no memory, no weights): counting is instant.
    """
    with torch.device("meta"):
        net = models.build(model_name, num_classes)
    out = []
    for mode in freezing.modes(model_name):
        plan = freezing.plan(model_name, mode)
        named = _with_added(net, model_name, plan)
        total = sum(p.numel() for _, p in named)
        frozen = sum(p.numel() for n, p in named if plan.frozen(n))
        out.append({"model": model_name, "mode": mode, "family": plan.family, "trains": plan.trains,
                    "frozen_blocks": plan.frozen_blocks, "trainable": total - frozen,
                    "share": (total - frozen) / total, "prefixes": plan.prefixes})
    return out


def _with_added(net: torch.nn.Module, model_name: str, plan: freezing.FreezePlan) -> list:
    """``net``'s named parameters, with the parts ``plan``'s family adds (on a meta copy)."""
    if plan.adds is None:
        return list(net.named_parameters())
    from . import added

    with torch.device("meta"):
        copy = models.build(model_name, net.get_submodule(models.spec(model_name).head).out_features)
    added.attach(copy, model_name, plan.adds)
    return list(copy.named_parameters())


def _frozen_text(row: dict) -> str:
    if row["family"] in ("prefix", "prefix_cls"):
        return "frozen: " + (", ".join(row["prefixes"]) or "-")
    if row["family"] == "surgical":  # the trained units by name
        s = models.spec(row["model"])
        trained = [n for n in (*s.stem, *s.blocks, *s.tail, s.head) if not freezing.under(n, row["prefixes"])]
        return "trains: " + ", ".join(trained)
    return "trains: " + row["trains"]


def weights_lines(model_name: str) -> list[str]:
    """One line per pretrained-weights entry of ``model_name``: its name, expected input size and
    normalisation (from torchvision's / timm's metadata) and the file the loader looks for."""
    out = []
    for i, w in enumerate(models.spec(model_name).weights):
        e = models.expect(w)
        alias = f" (= {models.DEFAULT_ALIAS})" if i == 0 else ""
        out.append(f"  weights {w.name}{alias}: {w.source}, {e.image_size}x{e.image_size} px, "
                   f"mean {e.mean}, std {e.std}; file {e.file}")
    return out or ["  weights: none registered (train.weights: none, or a state-dict file)"]


def describe(model: str | None = None, num_classes: int = 10, counts: bool = False) -> str:
    names = [model] if model else list(models.REGISTRY)
    lines = []
    for name in names:
        spec = models.spec(name)
        lines.append(f"{name}: {spec.description}")
        lines.extend(weights_lines(name))
        if counts:
            for r in rows(name, num_classes):
                lines.append(f"  {r['mode']:<22} {r['family']:<10} {r['trainable']:>12,} trainable "
                             f"({100 * r['share']:6.2f} %)  {_frozen_text(r)}")
            lines.append(f"  (mode names: {freezing.valid(name)})")
            lines += [f"  (not defined: {grammar.replace('.*', '*')}: {why})"
                      for grammar, why in freezing.NOT_APPLICABLE[spec.family]]
        else:
            lines.append("  modes: " + ", ".join(freezing.modes(name)))
    if not counts:
        lines.append("(--describe counts trainable parameters per mode)")
    return "\n".join(lines)


def describe_groups(model: str, decay: float, mode: str = "freeze_none", lr: float = 1.0,
                    num_classes: int = 10) -> str:
    """The optimiser's parameter groups of ``model`` under ``mode`` with layer decay ``decay``:
    one line per group with its lr multiplier, its lr at base ``lr``, trainable count and modules."""
    freezing.check(model, mode)
    rows = layer_decay.describe(model, decay, lr, mode, num_classes)
    lines = [f"{model} {mode}, train.layer_decay = {decay:g}, lr = {lr:g}: {len(rows)} parameter group(s)"]
    for r in rows:
        lines.append(f"  {r['group']:<9} x {r['scale']:<10.6g} lr {r['lr']:<10.4g} {r['trainable']:>12,} "
                     f"trainable  {', '.join(r['prefixes'])}")
    return "\n".join(lines)

"""``tfreeze models``: the architectures and freeze modes, with trainable parameter shares."""

from __future__ import annotations

from . import freezing
from . import registry as models


def rows(model_name: str, num_classes: int = 10) -> list[dict]:
    """One row per freeze mode of ``model_name``: frozen prefixes, trainable count and share."""
    net = models.build(model_name, num_classes)
    named = list(net.named_parameters())
    total = sum(p.numel() for _, p in named)
    out = []
    for mode in freezing.modes(model_name):
        plan = freezing.plan(model_name, mode)
        frozen = sum(p.numel() for n, p in named if freezing.under(n, plan.prefixes))
        out.append({"model": model_name, "mode": mode, "frozen_blocks": plan.frozen_blocks,
                    "trainable": total - frozen, "share": (total - frozen) / total,
                    "prefixes": plan.prefixes})
    return out


def describe(model: str | None = None, num_classes: int = 10, counts: bool = False) -> str:
    names = [model] if model else list(models.REGISTRY)
    lines = []
    for name in names:
        spec = models.spec(name)
        lines.append(f"{name}: {spec.description}")
        if counts:
            for r in rows(name, num_classes):
                lines.append(f"  {r['mode']:<20} {r['trainable']:>12,} trainable "
                             f"({100 * r['share']:6.2f} %)  frozen: {', '.join(r['prefixes']) or '-'}")
        else:
            lines.append("  modes: " + ", ".join(freezing.modes(name)))
    if not counts:
        lines.append("(--describe builds each model and counts trainable parameters per mode)")
    return "\n".join(lines)

"""The seeds of one (ViT model, freeze mode) trained as one stacked model with torch.func.

The candidate to ``tfreeze train --jobs N`` (one process per seed) that issue #14 asks to measure:
``torch.func.stack_module_state`` stacks the trainable parameters of K seeds along a new leading
dimension, ``vmap`` over ``functional_call`` runs the K forward passes as one batched program, and
one SGD optimiser steps the stacked tensors (SGD is element-wise, so each slice takes exactly the
step its own run would). The frozen weights are passed once, unbatched: with pretrained weights
every seed shares them, so they are read once per step instead of K times.

Each seed keeps its own batch order, so slice k sees the batches run k sees; ``Ensemble.weights(k)``
returns slice k as a plain state dict. ``tests/test_benchmarks.py`` checks, step for step, that
the stacked run equals K separate runs (float round-off apart). Only ViT models: vmap cannot
update BatchNorm running statistics stored once for K models, and ViT has no BatchNorm.

What this is not (yet): a training route. ``benchmarks/concurrent_seeds.py --ensemble`` measures
it beside K processes in one run; it becomes a route of ``tfreeze train`` only if it wins on a GPU.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from transfer_freezing.train.core import autocast


def share_frozen(nets: list[nn.Module]) -> None:
    """Copy the frozen parameters and the buffers of ``nets[0]`` into the others, in place.

    What pretrained weights do in the study: seeds differ only in what they train (and in the
    trainable parts' initialisation and batch order), never in what they freeze.
    """
    first = nets[0].state_dict()
    trainable = {k for k, p in nets[0].named_parameters() if p.requires_grad}
    with torch.no_grad():
        for net in nets[1:]:
            for key, value in net.state_dict().items():
                if key not in trainable:
                    value.copy_(first[key])


class Ensemble:
    """K networks of one architecture and freeze mode, trained as one vmapped model with SGD."""

    def __init__(self, nets: list[nn.Module], lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 fused: bool = False):
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in nets[0].modules()):
            raise ValueError("Ensemble cannot train models with BatchNorm (running stats are shared)")
        self.k = len(nets)
        names = [k for k, p in nets[0].named_parameters() if p.requires_grad]
        params, _ = stack_module_state(nets)
        self.trainable = {k: params[k].detach().clone().requires_grad_() for k in names}
        self.frozen = {k: p.detach() for k, p in nets[0].named_parameters() if not p.requires_grad}
        self.frozen.update(dict(nets[0].named_buffers()))
        self.base = copy.deepcopy(nets[0]).to("meta")  # the architecture only; weights come per call
        self.opt = torch.optim.SGD(list(self.trainable.values()), lr=lr, momentum=momentum,
                                   weight_decay=weight_decay, **({"fused": True} if fused else {}))

    def _one(self, trainable: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, ({**trainable, **self.frozen},), (x,))

    def logits(self, xs: torch.Tensor) -> torch.Tensor:
        """[K, B, ...] inputs (one batch per seed) -> [K, B, classes] logits."""
        return vmap(self._one, in_dims=(0, 0))(self.trainable, xs)

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def step(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        """One SGD step of every seed on its own batch; returns the K mean losses (detached).

        Under the training core's autocast (bf16 on a GPU). The summed per-seed mean losses give
        each slice the gradient of its own loss alone.
        """
        with autocast(xs.device):
            logits = self.logits(xs)
            losses = nn.functional.cross_entropy(logits.flatten(0, 1), ys.flatten(), reduction="none")
            losses = losses.view(self.k, -1).mean(1)
        self.opt.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.opt.step()
        return losses.detach()

    def weights(self, k: int) -> dict[str, torch.Tensor]:
        """Seed ``k``'s trainable parameters as a state dict (keys as in the module)."""
        return {name: t[k].detach() for name, t in self.trainable.items()}

"""Why a freeze mode scores what it scores: how far each part of the model moved, and how much its
representation changed.

For one finished run, two models are built fresh from the registry (no activation cache, no
fast-forward rewrites, so every block returns its full output): the *initial* model exactly as the
run started (the seeded initialisation or the pretrained weights, then the freeze mode; rebuilt
from the run's seed and weights like ``checkpoint.load_model``, so a resumed run gets the same
base) and the *fine-tuned* one (that base plus the best weights of ``model.pt``). Then per part:

- **weight change** ``||theta - theta0|| / ||theta0||``, the Frobenius norm over all the part's
  weights (its state dict without BatchNorm running statistics: a frozen BatchNorm keeps its affine
  as buffers, a trained one as parameters, and both count the same). Parts are
  ``registry.ModelSpec``'s: ``stem`` (patch embedding + position embedding / conv1 + bn1), one
  ``block_NN`` per backbone block, ``tail`` (class token + final LayerNorm; ResNet has none) and
  ``head``. A frozen part is exactly 0. A parameter-efficient family's added parameters (LoRA
  factors, adapters, prompts) are one more part, ``added``; LoRA's update is merged into the
  weights first, so a block shows the change LoRA made to it.
- **linear CKA** (Kornblith et al. 2019) between the two models' outputs of every backbone block
  on a fixed sample of test clips: for a ViT the class token of each encoder block's output, for a
  ResNet each stage's output average-pooled over space. ``cka`` is the *unbiased* form (the
  debiased HSIC estimator of Song et al. 2012, as in Nguyen, Raghu & Kornblith 2021): with a few
  hundred clips and 768-2,048 features the standard (biased) form is far above 0 even for unrelated
  representations, the unbiased one is not. ``cka_biased`` (the standard centred form,
  ``||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F)``) is kept beside it in ``diagnostics.json``.

The ViT readout is the class token, what the head reads. A prefix mode that trains the class token
(``freeze_patch_0_<k>``; not the ``_cls`` variants) changes the input of block 0, so even its frozen
blocks can show a CKA below 1 at an unchanged weight: the token steers them like a prompt.

The sample is the first ``clips`` test clips of a fixed permutation (seed 0, independent of the
run's seed), so every mode and seed of a fold is measured on the same clips.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import atomic
from ..data.inputs import Split, to_model_input
from ..model import added, freezing
from ..model import registry as models
from . import checkpoint

FILE = "diagnostics.json"
SAMPLE_SEED = 0  # the clip sample is the same for every run of a fold
RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")
MIN_CLIPS = 4  # the unbiased HSIC estimator needs n >= 4


# --------------------------------------------------------------------------- the statistics

def _centre_gram(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(0, keepdim=True)
    return x @ x.T


def cka_biased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Standard linear CKA of (n, p) and (n, q) features: ``||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F)``
    on column-centred features (Kornblith et al. 2019, eq. for the linear kernel). In [0, 1]."""
    x, y = _features(x, y)
    x, y = x - x.mean(0), y - y.mean(0)
    cross = (y.T @ x).square().sum()
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    return float(cross / norm) if norm > 0 else math.nan


def _hsic_unbiased(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:  # noqa: E741 - the paper's names
    """Song et al. (2012)'s unbiased HSIC estimator of two (n, n) Gram matrices."""
    n = k.shape[0]
    k, l = k.clone(), l.clone()  # noqa: E741
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    ones = torch.ones(n, dtype=k.dtype, device=k.device)
    trace = (k * l).sum()  # tr(K L) for symmetric L
    middle = (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (ones @ k @ (l @ ones))
    return (trace + middle - cross) / (n * (n - 3))


def cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased linear CKA of (n, p) and (n, q) features (n >= 4): about 0 for unrelated features
    whatever p / n, 1 for the same ones; it can be slightly below 0 or above 1 by chance."""
    x, y = _features(x, y)
    if len(x) < MIN_CLIPS:
        raise ValueError(f"unbiased CKA needs at least {MIN_CLIPS} examples, got {len(x)}")
    # The estimator is invariant to a shift of either features; centring first only saves digits.
    k, l = _centre_gram(x), _centre_gram(y)  # noqa: E741
    hxy, hxx, hyy = _hsic_unbiased(k, l), _hsic_unbiased(k, k), _hsic_unbiased(l, l)
    norm = hxx * hyy
    return float(hxy / norm.sqrt()) if norm > 0 else math.nan


def _features(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 2 or y.dim() != 2 or len(x) != len(y):
        raise ValueError(f"CKA needs (n, p) and (n, q) features, got {tuple(x.shape)} and {tuple(y.shape)}")
    return x.detach().double().cpu(), y.detach().double().cpu()


def relative_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """``||after - before|| / ||before||`` over all tensors of ``before`` (Frobenius norm of their
    concatenation); 0 when nothing changed, NaN when ``before`` is all zeros but something moved."""
    diff = sum(float((after[k].double() - v.double()).square().sum()) for k, v in before.items())
    base = sum(float(v.double().square().sum()) for v in before.values())
    if diff == 0:
        return 0.0
    return math.sqrt(diff / base) if base > 0 else math.nan


# --------------------------------------------------------------------------- the model's parts

@dataclass(frozen=True)
class Part:
    """One reported part of a model: its name (``stem``, ``block_03``, ``tail``, ``head``) and the
    module / parameter name prefixes it covers; ``block`` is the backbone block's module name, or ''."""

    name: str
    prefixes: tuple[str, ...]
    block: str = ""


def parts(model_name: str) -> tuple[Part, ...]:
    """The parts of ``model_name`` in forward order, from ``registry.ModelSpec``."""
    s = models.spec(model_name)
    out = [Part("stem", s.stem)]
    out += [Part(f"block_{i:02d}", (b,), b) for i, b in enumerate(s.blocks)]
    if s.tail:
        out.append(Part("tail", s.tail))
    out.append(Part("head", (s.head,)))
    return tuple(out)


def part_order(name: str) -> tuple[int, int]:
    """Sort key of a part name in forward order: stem, block_00, block_01, ..., tail, head."""
    if name.startswith("block_"):
        return (1, int(name.removeprefix("block_")))
    return ({"stem": 0, "tail": 2, "head": 3, "added": 4}.get(name, 5), 0)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights: its state dict without BatchNorm running statistics."""
    return {k: v.detach() for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] not in RUNNING_STATS and v.is_floating_point()}


def weight_changes(model_name: str, initial: nn.Module, tuned: nn.Module) -> dict[str, float]:
    """Relative weight change of every part of ``model_name`` between two of its models.

    A parameter-efficient family's added parameters (``freezing.added``: LoRA factors, adapters,
    prompts) are one more part, ``added``. Then both models' LoRA updates are merged into their
    weights (in place; the same function), so a block's change is what LoRA did to its weights.
    """
    before, after = weights(initial), weights(tuned)
    extra = {k: v for k, v in before.items() if freezing.added(k)}
    out = {"added": relative_change(extra, after)} if extra else {}
    if added.merge(initial) + added.merge(tuned):
        before, after = weights(initial), weights(tuned)
    for part in parts(model_name):
        keys = [k for k in before if freezing.under(k, part.prefixes) and not freezing.added(k)]
        out[part.name] = relative_change({k: before[k] for k in keys}, after)
    return out


# --------------------------------------------------------------------------- block representations

def _readout(family: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if family == "vit":
        return lambda out: out[:, 0]  # the class token of the block's (B, L, E) output
    return lambda out: out.mean(dim=(2, 3))  # global average pool of the stage's (B, C, H, W)


@torch.no_grad()
def block_features(model_name: str, model: nn.Module, images: torch.Tensor, batch_size: int,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """Per backbone block (``block_NN``): the (n, features) representation of ``images`` (stored
    (N, H, W) images) at the block's output, read by a forward hook; fp32, eval mode."""
    readout = _readout(models.spec(model_name).family)
    found: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for part in parts(model_name):
        if part.block:
            found[part.name] = []

            def hook(module, args, output, name=part.name):
                found[name].append(readout(output).float().cpu())

            hooks.append(model.get_submodule(part.block).register_forward_hook(hook))
    model.eval().to(device)
    try:
        for start in range(0, len(images), batch_size):
            model(to_model_input(images[start:start + batch_size].to(device)))
    finally:
        for h in hooks:
            h.remove()
    return {name: torch.cat(chunks) for name, chunks in found.items()}


def sample(split: Split, clips: int) -> tuple[torch.Tensor, list[str]]:
    """The first ``clips`` clips of a fixed permutation of ``split`` (in split order): images, ids."""
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(SAMPLE_SEED))
    idx = order[:clips].sort().values
    return split.images[idx.to(split.images.device)].cpu(), [split.clip_ids[i] for i in idx.tolist()]


# --------------------------------------------------------------------------- one run

def from_checkpoint(path: Path, test: Split, clips: int, device: torch.device,
                    batch_size: int = 32) -> dict:
    """``diagnose`` the run of a ``model.pt``: its base rebuilt from the run's seed and weights
    (``checkpoint.base_model``, checked against the stored frozen-weights hash, so a resumed run
    is measured from its true start), the fine-tuned model = base + the stored best weights."""
    state = checkpoint.read_model(path)
    initial = checkpoint.base_model(state, path)
    tuned = copy.deepcopy(initial)
    checkpoint.apply(tuned, state["weights"])
    return diagnose(state["config"], initial, tuned, test, clips, device, batch_size)


def diagnose(cfg: dict, initial: nn.Module, tuned: nn.Module, test: Split, clips: int,
             device: torch.device, batch_size: int = 32) -> dict:
    """Weight change of every part and CKA of every block between two models of one run.

    ``cfg`` is the run's config (``asdict(RunConfig)``: model, freeze, seed, fold), ``test`` the test
    split as stored images; CKA needs at least ``MIN_CLIPS`` of them (else it is left out).
    """
    start = time.perf_counter()
    name = cfg["model"]
    changes = weight_changes(name, initial, tuned)
    n = min(clips, len(test))
    entries: dict[str, dict] = {part: {"weight_change": change} for part, change in
                                sorted(changes.items(), key=lambda kv: part_order(kv[0]))}
    if n >= MIN_CLIPS:
        images, _ = sample(test, n)
        before = block_features(name, initial, images, batch_size, device)
        after = block_features(name, tuned, images, batch_size, device)
        for block in before:
            entries[block]["cka"] = cka(before[block], after[block])
            entries[block]["cka_biased"] = cka_biased(before[block], after[block])
    family = models.spec(name).family
    return {"model": name, "freeze_mode": cfg["freeze"], "seed": cfg["seed"], "fold": cfg.get("fold", 0),
            "frozen_blocks": freezing.plan(name, cfg["freeze"]).frozen_blocks,
            "clips": n if n >= MIN_CLIPS else 0,
            "cka_form": "unbiased linear CKA (Song et al. 2012 HSIC estimator); cka_biased: the standard "
                        "centred form (Kornblith et al. 2019)",
            "readout": "class token of each encoder block" if family == "vit"
                       else "global average pool of each stage",
            "parts": entries, "seconds": round(time.perf_counter() - start, 3)}


def write(diagnostics: dict, path: Path) -> None:
    """``diagnostics.json``: NaN (an undefined ratio) is written as null."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return None if isinstance(v, float) and not math.isfinite(v) else v

    atomic.write_json(path, clean(diagnostics))


def metrics(diagnostics: dict) -> dict[str, float]:
    """MLflow metrics of ``diagnose``'s result: ``weight_change.<part>``, ``cka.<block>`` (sortable)."""
    out = {}
    for name, entry in diagnostics["parts"].items():
        for key in ("weight_change", "cka"):
            value = entry.get(key)
            if value is not None and math.isfinite(value):
                out[f"{key}.{name}"] = value
    return out

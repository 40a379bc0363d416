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
class Weights:
    """One pretrained-weights entry of an architecture: what ``train.weights`` names.

    ``source`` says where it comes from (a key of ``SOURCES``): ``torchvision`` (``ref`` is the
    weights enum member, e.g. ``ViT_B_16_Weights.IMAGENET1K_V1``) or ``timm`` (``ref`` is the
    Hugging Face Hub repository timm's ``pretrained_cfg`` names, e.g.
    ``timm/deit_base_patch16_224.fb_in1k``). The input size and normalisation it expects are read
    from that library's own metadata (``expect``), never retyped here.
    """

    name: str
    source: str
    ref: str

    def url(self) -> str:
        """torchvision's download URL of these weights (its file name is what the hub cache holds)."""
        from torchvision import models as tvm

        enum, _, member = self.ref.partition(".")
        return getattr(getattr(tvm, enum), member).url


@dataclass(frozen=True)
class ModelSpec:
    """How to build one architecture and where its parts are.

    ``blocks`` are the module names of the backbone's stages in order (the unit a freeze mode
    counts); ``stem`` is what comes before them; ``head`` is the classifier that gets replaced.
    ``weights``: the pretrained weights the registry knows, the first the default (what
    ``train.weights: imagenet`` means); empty for the offline demo models. ``impl``: whose module
    layout the model has (``torchvision`` or ``timm``): it picks how the activation cache cuts
    the forward pass (``activation_cache.STAGES``).
    """

    family: str
    build: Callable[[int], nn.Module]
    head: str
    stem: tuple[str, ...]
    blocks: tuple[str, ...]
    tail: tuple[str, ...]
    weights: tuple[Weights, ...]
    fixed_image_size: int | None
    description: str
    impl: str = "torchvision"
    class_token: str = ""  # the ViT class token's parameter name (the ``_cls`` modes freeze it)


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


def _timm(architecture: str, image_size: int) -> nn.Module:
    import timm

    return timm.create_model(architecture, pretrained=False, img_size=image_size)


def _tv(enum: str, *members: str) -> tuple[Weights, ...]:
    return tuple(Weights(m, "torchvision", f"{enum}.{m}") for m in members)


_VIT_BLOCKS = tuple(f"encoder.layers.encoder_layer_{i}" for i in range(12))
_VIT_PARTS = dict(
    family="vit",
    head="heads.head",
    stem=("conv_proj", "encoder.pos_embedding"),
    blocks=_VIT_BLOCKS,
    tail=("class_token", "encoder.ln"),
    class_token="class_token",
)
# timm's VisionTransformer (DeiT) under the same parts: patch_embed + pos_embed is the stem the
# prefix modes freeze (torchvision's conv_proj + encoder.pos_embedding), cls_token and the final
# norm the tail (class_token, encoder.ln), blocks.<i> the encoder blocks, head the classifier.
_TIMM_VIT_PARTS = dict(
    family="vit",
    head="head",
    stem=("patch_embed", "pos_embed"),
    blocks=tuple(f"blocks.{i}" for i in range(12)),
    tail=("cls_token", "norm"),
    class_token="cls_token",
    impl="timm",
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
        weights=_tv("ViT_B_16_Weights", "IMAGENET1K_V1", "IMAGENET1K_SWAG_E2E_V1",
                    "IMAGENET1K_SWAG_LINEAR_V1"),
        fixed_image_size=None,
        description="torchvision ViT-B/16 (the study's model)",
        **_VIT_PARTS,
    ),
    "deit_b_16": ModelSpec(
        build=partial(_timm, "deit_base_patch16_224"),
        weights=(Weights("fb_in1k", "timm", "timm/deit_base_patch16_224.fb_in1k"),),
        fixed_image_size=None,
        description="timm DeiT-B/16 (ViT-B/16 trained the DeiT way, the AST starting point)",
        **_TIMM_VIT_PARTS,
    ),
    "vit_demo": ModelSpec(
        build=partial(_vit, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768),
        weights=(),
        fixed_image_size=None,
        description="ViT with ViT-B/16's block structure (12 blocks, patch 16), width 192: offline demo",
        **_VIT_PARTS,
    ),
    "resnet50": ModelSpec(
        build=_resnet50,
        weights=_tv("ResNet50_Weights", "IMAGENET1K_V2", "IMAGENET1K_V1"),
        fixed_image_size=None,
        description="torchvision ResNet-50 (the CNN contrast)",
        **_RESNET_PARTS,
    ),
    "resnet_demo": ModelSpec(
        build=_resnet_demo,
        weights=(),
        fixed_image_size=None,
        description="ResNet with ResNet-50's stages (stem, layer1-4), one BasicBlock each: offline demo",
        **_RESNET_PARTS,
    ),
}


def spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise UserError(f"unknown model {name!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[name]


# --------------------------------------------------------------------------- naming weights

NO_WEIGHTS = "none"
DEFAULT_ALIAS = "imagenet"  # each architecture's default entry (its first)
FILE_SUFFIXES = (".pt", ".pth", ".safetensors")


def is_file_value(value: str) -> bool:
    """Whether a ``train.weights`` value names a file (a path or a state-dict suffix), not an entry."""
    return "/" in value or os.sep in value or value.endswith(FILE_SUFFIXES)


def weights_names(name: str) -> tuple[str, ...]:
    """The entry names ``train.weights`` may give for ``name`` (``imagenet`` means the first)."""
    return tuple(w.name for w in spec(name).weights)


def entry(name: str, value: str) -> Weights | None:
    """The registry entry ``train.weights = value`` means for ``name`` (None: no entry, random or a
    file), else one line saying what ``name`` has."""
    s = spec(name)
    if value == NO_WEIGHTS or is_file_value(value):
        return None
    if not s.weights:
        with_weights = [m for m, x in REGISTRY.items() if x.weights]
        raise UserError(f"train.weights = {value!r} but model {name!r} has no pretrained weights; use "
                        "train.weights = none, a state-dict file, or a model among "
                        f"{', '.join(with_weights)}")
    if value == DEFAULT_ALIAS:
        return s.weights[0]
    for w in s.weights:
        if w.name == value:
            return w
    raise UserError(f"train.weights = {value!r} is not a weights entry of {name}; valid: none, "
                    f"{DEFAULT_ALIAS} (= {s.weights[0].name}), {', '.join(weights_names(name))}, "
                    "or a state-dict file path")


def weights_for(name: str, value: str) -> str:
    """``value`` with ``{model}`` replaced by ``name`` (a file per model, e.g. the pretrain stage's)."""
    return value.replace("{model}", name)


@dataclass(frozen=True)
class Expect:
    """What one weights entry expects of its inputs, and where its file lives."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    file: Path  # where the loader looks for it (torch hub cache / Hugging Face hub cache)
    origin: str  # where it comes from (URL, or the Hub repository)


def _torchvision_expect(w: Weights) -> Expect:
    """From torchvision's ``weights.transforms()`` (crop size, mean, std) and the hub cache path."""
    import torch
    from torchvision import models as tvm

    enum, _, member = w.ref.partition(".")
    t = getattr(getattr(tvm, enum), member).transforms()
    url = w.url()
    return Expect(int(t.crop_size[0]), tuple(t.mean), tuple(t.std),
                  Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url), url)


HF_FILE = "model.safetensors"  # what timm's Hub repositories hold


def hf_cache() -> Path:
    """The Hugging Face hub cache, as huggingface_hub finds it (``HF_HUB_CACHE``, ``HF_HOME``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home) / "hub"


def _timm_expect(w: Weights) -> Expect:
    """From timm's ``pretrained_cfg`` (input size, mean, std) and the Hugging Face hub cache."""
    import timm

    cfg = timm.models.get_pretrained_cfg(w.ref.removeprefix("timm/"))
    folder = hf_cache() / ("models--" + w.ref.replace("/", "--")) / "snapshots"
    return Expect(int(cfg.input_size[-1]), tuple(cfg.mean), tuple(cfg.std),
                  folder / "<revision>" / HF_FILE, w.ref)


def _torchvision_cached(w: Weights) -> Path | None:
    path = _torchvision_expect(w).file
    return path if path.is_file() else None


def _timm_cached(w: Weights) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(w.ref, HF_FILE, cache_dir=hf_cache())
    return Path(found) if isinstance(found, str) else None


@dataclass(frozen=True)
class Source:
    """Where one kind of weights entry comes from: its metadata, its cache, its download."""

    expect: Callable[[Weights], Expect]
    cached: Callable[[Weights], Path | None]
    fetch: Callable[[Weights], Path]


SOURCES: dict[str, Source] = {}  # filled below, once the fetchers are defined


def expect(w: Weights) -> Expect:
    return SOURCES[w.source].expect(w)


def expected_file(name: str, value: str = DEFAULT_ALIAS) -> str:
    """The file name of ``name``'s weights entry ``value``, e.g. ``vit_b_16-c867db91.pth``."""
    w = entry(name, value) if spec(name).weights else None
    return expect(w).file.name if w else "(none: this model has no pretrained weights)"


def cache_file(name: str, value: str = DEFAULT_ALIAS) -> Path:
    """Where the loader looks for ``name``'s weights entry ``value`` (the torch hub cache for
    torchvision's, the Hugging Face hub cache for timm's: ``<revision>`` is the snapshot)."""
    w = entry(name, value)
    if w is None:
        raise UserError(f"train.weights = {value!r} names no registry entry of {name}")
    return expect(w).file


# --------------------------------------------------------------------------- building and loading

def build(
    name: str,
    num_classes: int,
    image_size: int = 224,
    weights: str = NO_WEIGHTS,
    weights_path: str | None = None,
) -> nn.Module:
    """Build ``name`` for ``image_size`` inputs, load weights, replace the head by ``num_classes``.

    ``weights``: ``none`` (random), ``imagenet`` (the default entry), an entry's name, or a
    state-dict file (``{model}`` is replaced by ``name``). An entry must be used at its own input
    size: another ``image_size`` is one line (nothing is resized).
    """
    s = spec(name)
    w = entry(name, weights)
    if w is not None:
        check_image_size(name, w, image_size)
    if image_size % 16 and s.family == "vit":
        raise UserError(f"features.image_size = {image_size}: a ViT needs a multiple of 16")
    model = s.build(image_size)
    if weights != NO_WEIGHTS:
        load_pretrained(model, name, weights_path, weights)
    _replace_head(model, s.head, num_classes)
    return model


def check_image_size(name: str, w: Weights, image_size: int) -> None:
    """One line if the entry ``w`` of ``name`` expects another input size than ``image_size``."""
    want = expect(w).image_size
    if image_size != want:
        raise UserError(f"{name}'s weights {w.name} expect {want}x{want} inputs: set "
                        f"features.image_size = {want} (got {image_size}; inputs are not resized)")


def _replace_head(model: nn.Module, head: str, num_classes: int) -> None:
    from torch import nn

    parent_name, _, leaf = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old: nn.Linear = getattr(parent, leaf)
    setattr(parent, leaf, nn.Linear(old.in_features, num_classes))


def _describe_expected(name: str, value: str) -> str:
    w = entry(name, value)
    return expect(w).file.name if w else f"a state dict of {name} (e.g. the pretrain stage's output)"


WRAPPERS = {"model", "state_dict"}  # training scripts' checkpoints that hold the state dict under one key


def _read_state(path: Path, name: str, value: str) -> dict:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user problem
        raise UserError(
            f"weights file {path} could not be read as a state dict ({first_line(err)}); "
            f"expected {_describe_expected(name, value)}, a torch.save'd state_dict"
        ) from err
    if not isinstance(state, dict):
        raise UserError(f"weights file {path} holds a {type(state).__name__}, not a state dict; "
                        f"expected {_describe_expected(name, value)}")
    if len(state) == 1 and isinstance(next(iter(state.values())), dict) and set(state) & WRAPPERS:
        state = next(iter(state.values()))  # e.g. DeiT's own release: {"model": state_dict}
    return state


def load_pretrained(model: nn.Module, name: str, weights_path: str | None = None,
                    value: str = DEFAULT_ALIAS) -> None:
    """Load ``name``'s weights ``value`` from ``weights_path``, the cache, or a download if allowed.

    The head is replaced after loading, so its weights are not needed: a file's head (ImageNet's
    1,000 classes, a pretraining task's own) is skipped whatever its shape; every other tensor must
    fit exactly.
    """
    path = weights_file(name, weights_path, value)
    state = _read_state(path, name, value)
    head = spec(name).head
    want = {k: v for k, v in model.state_dict().items() if not _under(k, head)}
    got = {k: v for k, v in state.items() if not _under(k, head)}
    misfit = _misfit(want, got)
    if misfit:
        raise UserError(f"weights file {path} does not fit {name}: {misfit}; "
                        f"expected {_describe_expected(name, value)}")
    try:
        model.load_state_dict(got, strict=False)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise UserError(f"weights file {path} does not fit {name}: {first_line(err)}") from err


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def weights_file(name: str, weights_path: str | None = None, value: str = DEFAULT_ALIAS) -> Path:
    """The file of ``name``'s weights ``value``: ``weights_path``, the file ``value`` names, or the
    entry's cached file (downloaded into the cache if missing and allowed).

    Cheap (no model is built): the train stage calls it before it creates any output or MLflow run.
    """
    if is_file_value(value):
        path = Path(weights_for(name, value))
        if not path.is_file():
            raise UserError(f"train.weights = {value}: file {path} not found; expected a state dict of "
                            f"{name} there (e.g. the pretrain stage's output: dvc repro pretrain)")
        return path
    w = entry(name, value)
    if w is None:
        raise UserError(f"train.weights = {value!r}: {name} loads no weights")
    if weights_path:
        path = Path(weights_path)
        if not path.is_file():
            raise UserError(f"train.weights_path = {weights_path}: file not found; "
                            f"expected {name}'s {w.name} weights ({expect(w).file.name}) there")
        return path
    return SOURCES[w.source].cached(w) or SOURCES[w.source].fetch(w)


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


def _torchvision_fetch(w: Weights) -> Path:
    import torch

    url = w.url()
    path = _torchvision_expect(w).file
    path.parent.mkdir(parents=True, exist_ok=True)
    # torch.hub's urlopen has no timeout: without a socket default it can wait forever on a
    # network that drops packets instead of refusing them.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=True)
    except Exception as err:  # noqa: BLE001 - offline: any network error means the same thing
        raise UserError(
            f"pretrained weights {w.ref} not found at {path} and download failed "
            f"({first_line(err)}); put {path.name} (from {url}) in {path.parent} "
            "or set train.weights_path"
        ) from err
    finally:
        socket.setdefaulttimeout(previous)
    return path


def _timm_fetch(w: Weights) -> Path:
    from huggingface_hub import hf_hub_download

    where = _timm_expect(w).file
    try:
        return Path(hf_hub_download(w.ref, HF_FILE, cache_dir=hf_cache(), etag_timeout=DOWNLOAD_TIMEOUT_S))
    except Exception as err:  # noqa: BLE001 - offline: any network error means the same thing
        raise UserError(
            f"pretrained weights {w.ref} not found in the Hugging Face hub cache and download failed "
            f"({first_line(err)}); put {HF_FILE} at {where} (on a machine with network: "
            f"hf download {w.ref} {HF_FILE}, then copy {where.parent.parent.parent}) "
            "or set train.weights_path to the file"
        ) from err


SOURCES.update(
    torchvision=Source(_torchvision_expect, _torchvision_cached, _torchvision_fetch),
    timm=Source(_timm_expect, _timm_cached, _timm_fetch),
)

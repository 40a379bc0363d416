"""The training core: one (model, freeze mode, seed) run, resumable, with no tracking dependency.

Read ``fit`` top to bottom like nanoGPT's train.py: setup, the data path (``prepare``), epoch loop
(train, validate, checkpoint), then the best-validation weights scored once on test. The resumable
state, resuming it and when it is written (interval, SIGTERM) live in ``checkpoint``; the fault
injection of the tests in ``hooks``. MLflow lives in ``tracking``; this module only calls
``on_epoch`` so it runs (and benchmarks) with nothing but torch and torchvision installed (tqdm
draws the progress bar when present).

Speed, without changing what is computed (beyond float round-off):
- the splits are in memory whole (on the GPU too, moved once per run); batches are index slices;
- a constant frozen prefix runs once per split (``prefix_cache``), the rest trains on its output;
- ViT attention in the batch-first layout while training (``attention``), and the last block for
  the class token only (``readout``); channels_last weights for CNNs (``MEMORY_FORMATS``);
- CPU: one thread per physical core, fp32 (bf16 autocast measures faster on AMX CPUs but changes
  the numbers; see benchmarks/train_throughput.py); GPU: bf16 autocast, TF32, fused SGD, no
  per-batch host sync; ``compile`` wraps the trained module in ``torch.compile`` (on this CPU it
  costs 15-40 s per run for +-4 %, so it stays off by default).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..data.inputs import Split, to_model_input
from ..errors import Terminated
from ..grid import LAST
from ..model import activation_cache as prefix_cache
from ..model import added, attention, freezing, layer_decay, readout
from ..model import registry as models
from . import augment as augmentation
from . import checkpoint
from .hooks import Faults, Hooks

try:
    from tqdm import tqdm
except ModuleNotFoundError:  # a bare GPU box (benchmarks/gpu.sh) has torch + torchvision only
    tqdm = None



@dataclass(frozen=True)
class RunConfig:
    """Every setting that decides one run's numbers."""

    model: str
    freeze: str
    seed: int
    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    frozen_bn: str = "eval"
    weights: str = "none"
    weights_path: str | None = None
    image_size: int = 224
    num_classes: int = 10
    device: str = "auto"
    activation_cache: bool = True
    compile: bool = False
    fold: int = 0  # the training cell of a fold scheme (repeat * folds + fold); 0 for one split
    optimizer: str = "sgd"  # sgd (with momentum) | adamw
    schedule: str = "none"  # none | cosine (per step, to 0 at the end of the last epoch)
    warmup_epochs: int = 0  # linear warm-up of the lr over this many epochs (per step)
    augment: bool = False  # the original's training-time augmentation (``augment``)
    augment_time_shift: int = 10
    augment_freq_mask: int = 20
    augment_time_mask: int = 30
    label_smoothing: float = 0.0  # of the training loss (cross-entropy); evaluation stays plain
    clip_grad_norm: float = 0.0  # the gradients' global L2 norm clipped to this per step (0: off)
    layer_decay: float = 1.0  # layer-wise lr decay (``layer_decay``): block i at lr * decay**(depth - i)
    lp_epochs: int = 0  # LP-FT: the first lp_epochs train the head only (``phases``)

    @property
    def torch_seed(self) -> int:
        """The seed of this run's initialisation, batch order and augmentation (``run_seed``)."""
        return run_seed(self.seed, self.fold)

    def key(self) -> str:
        # torch_seed is part of the key: a resumable state written under another seeding rule
        # (before seeds were derived per cell) is never continued under this one.
        identity = {**asdict(self), "torch_seed": self.torch_seed}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def run_seed(seed: int, cell: int = 0) -> int:
    """The torch seed of run (``seed``, fold ``cell``): its initialisation, batch order, augmentation.

    ``cell`` is the training cell of a fold scheme (repeat * folds + fold; 0 for one split), so a
    seed starts from another head and sees another batch order in every fold and repeat: its luck
    does not carry across cells, where the intervals of ``compare`` assume independent runs. Neither
    the model nor the freeze mode enters it, so the two arms of a pair (a mode and its reference,
    same seed and cell) start from the same initialisation and shuffle alike. SHA-256 of
    ``run/<seed>/<cell>`` cut to 63 bits: stable across processes, Python versions and machines
    (never Python's ``hash()``), and far from the small integers of ``grid.seeds``.
    """
    digest = hashlib.sha256(f"run/{seed}/{cell}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class Data:
    train: Split
    val: Split
    test: Split

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def to(self, device: torch.device) -> Data:
        return Data(*(s.to(device) for s in self.splits().values()))


@dataclass
class Prediction:
    """Per-clip outputs of one split: clip ids, labels, predicted classes, class probabilities."""

    clip_ids: list[str]
    labels: torch.Tensor
    preds: torch.Tensor
    probs: torch.Tensor


@dataclass
class Result:
    test_acc: float
    test_loss: float
    best_val_acc: float
    best_epoch: int
    trainable_params: int
    total_params: int
    wall_seconds: float
    history: list[dict] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    predictions: dict[str, Prediction] = field(default_factory=dict)  # val / test, best weights
    checkpoint_bytes: int = 0  # written by this process (a resumed run counts its own part)
    checkpoint_seconds: float = 0.0

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / self.total_params


EpochHook = Callable[[int, dict], None]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("none", "cosine")


def setup(cfg: RunConfig, device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer, int, int]:
    """Seeded model (``checkpoint.initial_model`` under ``cfg.torch_seed``) with the freeze mode
    applied, on ``device``, and the optimiser over what stays trainable (``optimizer``)."""
    model, trainable, total = checkpoint.initial_model(asdict(cfg), cfg.torch_seed)
    model.to(device)
    return model, optimizer(cfg, model, device), trainable, total


def optimizer(cfg: RunConfig, model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    """The optimiser over ``model``'s trainable parameters, in ``layer_decay.param_groups``' groups
    (one group unless ``cfg.layer_decay`` < 1; a frozen parameter is in none).

    ``sgd``: SGD with ``momentum`` and ``weight_decay`` (coupled, L2). ``adamw``: AdamW with torch's
    default betas and eps and ``weight_decay`` (decoupled; note torch's own default would be 0.01,
    here it is the configured value, 0 unless set); ``momentum`` does not apply.
    """
    groups = layer_decay.param_groups(model, cfg.model, cfg.lr, cfg.layer_decay)
    # One fused kernel per step on the GPU; the CPU keeps torch's default implementation.
    fused = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               **fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs ``[first, stop)`` with one trainable set, one optimiser and one schedule.

    ``head``: LP-FT's linear probe, everything below the head frozen (``freezing.backbone``);
    ``mode``: the freeze mode's trainable set. A phase starts with a fresh optimiser and schedule
    (Kumar et al. 2022 fine-tune from the probed head with a new optimiser).
    """

    name: str
    first: int
    stop: int

    @property
    def epochs(self) -> int:
        return self.stop - self.first


def phases(cfg: RunConfig) -> list[Phase]:
    """The run's phases in order: ``lp_epochs`` of ``head`` (LP-FT), then ``mode`` for the rest
    (the whole run when ``lp_epochs`` is 0); an empty phase is left out."""
    lp = min(cfg.lp_epochs, cfg.epochs)
    spans = [Phase("head", 0, lp), Phase("mode", lp, cfg.epochs)]
    return [phase for phase in spans if phase.epochs > 0]


@contextlib.contextmanager
def trainable_set(cfg: RunConfig, model: nn.Module, phase: Phase):
    """Within the block ``model`` trains ``phase``'s set: the head only (``head``, with BatchNorm
    statistics frozen as ``frozen_bn`` says for frozen modules), or the mode's (``mode``: as built)."""
    if phase.name == "mode":
        yield
        return
    undo = freezing.freeze_reversibly(model, freezing.backbone(cfg.model), cfg.frozen_bn == "eval")
    try:
        yield
    finally:
        undo()


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """The multiplier of the base lr at optimiser step ``step`` (0-based; one step per batch).

    Warm-up: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps (the first step
    uses lr / warmup_steps, the last warm-up step the full lr). Then ``none`` keeps 1 and ``cosine``
    follows ``0.5 * (1 + cos(pi * (step - warmup_steps) / (total_steps - warmup_steps)))``: 1 at
    the end of the warm-up, 0 at ``total_steps`` (just after the last step of the last epoch).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "none":
        return 1.0
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def scheduler(cfg: RunConfig, opt: torch.optim.Optimizer, train_clips: int, epochs: int | None = None
              ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-step lr schedule of ``cfg`` (``lr_factor``) over ``epochs`` (default ``cfg.epochs``;
    a phase's own length under LP-FT), None for a constant lr (the default). Every parameter group
    follows it from its own lr (layer decay)."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if cfg.schedule == "none" and cfg.warmup_epochs == 0:
        return None
    steps = math.ceil(train_clips / cfg.batch_size)  # run_epoch's batches per epoch
    factor = partial(lr_factor, warmup_steps=cfg.warmup_epochs * steps,
                     total_steps=(epochs or cfg.epochs) * steps, schedule=cfg.schedule)
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _augment_config(cfg: RunConfig) -> augmentation.AugmentConfig | None:
    spec = augmentation.AugmentConfig(cfg.augment_time_shift, cfg.augment_freq_mask, cfg.augment_time_mask)
    return spec if cfg.augment and spec.active else None


def augmenter(cfg: RunConfig) -> augmentation.Augment | None:
    """The run's training-time augmentation (seeded by ``cfg.torch_seed``), None when off."""
    spec = _augment_config(cfg)
    return augmentation.Augment(spec, cfg.torch_seed) if spec else None


def shuffler(cfg: RunConfig) -> torch.Generator:
    """The generator of the run's batch order (one ``randperm`` of the train split per epoch)."""
    return torch.Generator().manual_seed(cfg.torch_seed)


class Plain(nn.Module):
    """Stored images -> logits through the whole model: the path without an activation cache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(to_model_input(images))


# Weight layout per model family. channels_last: ResNet-50's step is ~15 % faster on this CPU
# (oneDNN) and it is what cuDNN's bf16 convolutions want; ViT's one convolution gains nothing.
MEMORY_FORMATS = {"resnet": torch.channels_last}

# In-place rewrites per model family that compute the same logits faster (same parameters and
# state-dict keys; see each module's docstring for what it skips and what it measured).
FAST_FORWARD: dict[str, tuple[Callable[[nn.Module], int], ...]] = {
    "vit": (attention.use_batch_first_attention, readout.use_class_token_readout),
}


def prepare(cfg: RunConfig, model: nn.Module, data: Data, device: torch.device,
            cache_dir: Path | None = None) -> tuple[nn.Module, Data]:
    """The module that maps a batch of the returned data to logits, and that data on ``device``:
    ``speed_up`` the model once, then ``forward_path`` for its current trainable set."""
    speed_up(cfg, model)
    return forward_path(cfg, model, data.to(device), device, cache_dir)


def speed_up(cfg: RunConfig, model: nn.Module) -> None:
    """The model family's weight layout and in-place fast-forward rewrites (same logits); once."""
    family = models.spec(cfg.model).family
    model.to(memory_format=MEMORY_FORMATS.get(family, torch.contiguous_format))
    for rewrite in FAST_FORWARD.get(family, ()):
        rewrite(model)


def forward_path(cfg: RunConfig, model: nn.Module, data: Data, device: torch.device,
                 cache_dir: Path | None = None) -> tuple[nn.Module, Data]:
    """The module from ``data``'s batches to logits, and the data it reads (``data`` on ``device``).

    With ``cfg.activation_cache`` and a constant frozen prefix (``prefix_cache``, decided from the
    model's trainable set now), the data hold the prefix's outputs and the module runs only the
    rest of the model. Caches go to ``cache_dir`` only with pretrained weights: a random
    initialisation differs per run seed (seed, cell), so nothing is shared.
    """
    layout = MEMORY_FORMATS.get(models.spec(cfg.model).family, torch.contiguous_format)
    net: nn.Module = Plain(model)
    if cfg.activation_cache and _augment_config(cfg):
        print("activation cache: off, train.augment changes the input images every epoch "
              "(no frozen stage sees constant inputs)")
    elif cfg.activation_cache:
        folder = cache_dir if cfg.weights != "none" else None
        context = {"model": cfg.model, "device": device.type, "precision": _precision(device),
                   "layout": str(layout)}
        cached = prefix_cache.prepare(model, cfg.model, data.splits(), cfg.batch_size, device,
                                      partial(autocast, device), folder, context)
        if cached:
            net, data = cached[0], Data(**cached[1])
    if cfg.compile:
        net = torch.compile(net)
    return net, data


def run_epoch(net: nn.Module, split: Split, batch_size: int, device: torch.device,
              opt: torch.optim.Optimizer | None = None, order: torch.Tensor | None = None,
              desc: str = "", schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
              augment: Callable[..., torch.Tensor] | None = None, label_smoothing: float = 0.0,
              clip_grad_norm: float = 0.0) -> tuple[float, float, torch.Tensor]:
    """One pass over ``split``: trains when ``opt`` is given. Returns (loss, acc %, predictions).

    ``net`` maps a batch of ``split.images`` to logits. Sums stay on the device (float64 loss,
    the same arithmetic as Python floats), so a GPU epoch syncs with the host once, at its end.
    ``label_smoothing`` smooths the cross-entropy (``fit`` gives it to training passes only);
    ``clip_grad_norm`` > 0 clips the trainable gradients' global L2 norm before each step. When
    training, ``schedule`` steps after every optimiser step and ``augment(images, step=batch
    index)`` rewrites each batch before the forward pass.
    """
    training = opt is not None
    net.train(training)
    home = split.labels.device
    order = (order if order is not None else torch.arange(len(split))).to(home)
    preds = torch.empty(len(split), dtype=torch.long, device=home)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    bar = _progress(range(0, len(order), batch_size), desc)
    for start in bar:
        idx = order[start:start + batch_size]
        x = split.images[idx].to(device, non_blocking=True)
        y = split.labels[idx].to(device, non_blocking=True)
        if training and augment is not None:
            x = augment(x, step=start // batch_size)
        with torch.set_grad_enabled(training), autocast(device):
            logits = net(x)
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=label_smoothing)
        if training:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm:
                nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip_grad_norm)
            opt.step()
            if schedule is not None:
                schedule.step()
        pred = logits.argmax(1)
        preds[idx] = pred.to(home)
        loss_sum += loss.detach().double() * len(idx)
        correct += (pred == y).sum()
        if getattr(bar, "disable", True) is False:  # an interactive bar: the sync is worth it
            seen = start + len(idx)
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}")
    return loss_sum.item() / len(split), 100.0 * correct.item() / len(split), preds.cpu()


def _progress(steps: range, desc: str):
    return tqdm(steps, desc=desc, leave=False, disable=None) if tqdm else steps


def autocast(device: torch.device):
    """The precision context of a forward pass on ``device``."""
    # bf16 autocast on GPUs. On CPUs fp32: AVX2-only ones run bf16 ~10x slower, and where AMX makes
    # it faster it still changes the numbers against the fp32 runs (measured in the benchmark).
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _precision(device: torch.device) -> str:
    return "bf16-autocast" if device.type == "cuda" else "fp32"


def physical_cores() -> int:
    """Physical cores this process may use (hyperthread siblings counted once)."""
    cpus = os.sched_getaffinity(0)
    cores = set()
    for cpu in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/core_cpus_list").read_text().strip())
        except OSError:
            return len(cpus)
    return len(cores)


def configure(device: torch.device) -> None:
    """Per-process settings: deterministic kernels, CPU threads = physical cores (or
    ``OMP_NUM_THREADS`` where the environment sets it), TF32 on GPUs."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or physical_cores())


def fit(cfg: RunConfig, data: Data, workdir: Path, on_epoch: EpochHook | None = None,
        resume_extra: dict | None = None, cache_dir: Path | None = None,
        checkpoint_seconds: float = 0.0, hooks: Hooks | None = None) -> Result:
    """Train ``cfg`` on ``data``, resuming from ``workdir/last.pt`` if one for ``cfg`` exists.

    Setup, then each phase (``phases``: LP-FT's head-only epochs, then the mode's) with its
    trainable set, forward path (activation cache), fresh optimiser and schedule, and its epochs
    (train, validate, record, checkpoint); then the best-validation weights scored once on test.
    The resumable state (``checkpoint.TrainState``) holds what the run changed and is
    written when ``checkpoint_seconds`` have passed since the last write (0: after every epoch), and
    at the end of the epoch in which SIGTERM arrived (then ``Terminated`` is raised; see
    ``checkpoint.Interval``). The best weights live in memory and in that state; ``workdir/model.pt``
    is written once, at the end (``dvc repro`` deletes a stage's outputs, ``model.pt`` among them,
    before it runs it again, so resuming must not need it). ``on_epoch(epoch, metrics)`` is called
    after each epoch, before its state is written. ``resume_extra`` is stored in every checkpoint
    (the tracking layer keeps its run id there) and read back by ``checkpoint.peek``. ``cache_dir``
    is where frozen-prefix activations are shared between runs (see ``prepare``). ``hooks`` are
    called at each epoch's start and end (``hooks.Hooks``); by default the fault injection the
    environment asks for, if any (``hooks.Faults.from_env``).
    """
    t0 = time.perf_counter()
    hooks = hooks if hooks is not None else Faults.from_env()
    io = checkpoint.IO()
    device = pick_device(cfg.device)
    configure(device)
    model, trainable, total = checkpoint.initial_model(asdict(cfg), cfg.torch_seed)
    model.to(device)
    changed = checkpoint.changed_keys(model)
    frozen = checkpoint.frozen_hash(model, changed)
    speed_up(cfg, model)
    data = data.to(device)
    augment = augmenter(cfg)
    state = checkpoint.TrainState(model, None, None, shuffler(cfg), changed, frozen, started=t0)
    if state.resume(workdir, cfg):
        print(f"resuming {cfg.model}/{cfg.freeze}/seed{cfg.seed}/fold{cfg.fold} "
              f"after epoch {state.epoch + 1}")

    path = None  # the last phase's (module, data): scores the best weights at the end
    with checkpoint.Interval(workdir / LAST, cfg, checkpoint_seconds, resume_extra, io) as saver:
        for phase in phases(cfg):
            if state.epoch + 1 >= phase.stop:
                continue  # finished before a resume
            with trainable_set(cfg, model, phase):
                net, split = path = forward_path(cfg, model, data, device, cache_dir)
                opt = optimizer(cfg, model, device)
                state.start_phase(opt, scheduler(cfg, opt, len(split.train), phase.epochs),
                                  resumes=state.epoch + 1 > phase.first)
                if len(phases(cfg)) > 1:
                    print(f"phase {phase.name}: epochs {phase.first + 1}-{phase.stop}, "
                          f"{freezing.count(model)[0]:,} trainable parameters")
                for epoch in range(max(state.epoch + 1, phase.first), phase.stop):
                    hooks.epoch_start(epoch)
                    order = torch.randperm(len(split.train), generator=state.shuffle)
                    lr = opt.param_groups[-1]["lr"]  # the head's lr (full) at the epoch's first step
                    tr_loss, tr_acc, _ = run_epoch(net, split.train, cfg.batch_size, device, opt, order,
                                                   desc=f"epoch {epoch + 1}/{cfg.epochs} train",
                                                   schedule=state.scheduler,
                                                   augment=partial(augment, epoch=epoch) if augment else None,
                                                   label_smoothing=cfg.label_smoothing,
                                                   clip_grad_norm=cfg.clip_grad_norm)
                    with added.evaluation():  # LoRA's merged weights computed once per pass
                        va_loss, va_acc, _ = run_epoch(net, split.val, cfg.batch_size, device, desc="val")
                    row = {"train_loss": tr_loss, "train_acc": tr_acc, "val_loss": va_loss, "val_acc": va_acc,
                           "lr": lr}
                    print(f"epoch {epoch + 1}/{cfg.epochs}: train loss {tr_loss:.4f} acc {tr_acc:.1f}  "
                          f"val loss {va_loss:.4f} acc {va_acc:.1f}")
                    state.record(epoch, row)
                    if on_epoch:
                        on_epoch(epoch, row)
                    saver.epoch_done(state, cfg.epochs)
                    hooks.epoch_end(epoch, state)

    net, split = path or forward_path(cfg, model, data, device, cache_dir)
    checkpoint.apply(model, state.best_weights)
    checkpoint.save_model(workdir / "model.pt", state.best_weights, cfg, frozen, io)
    with added.evaluation():
        te_loss, te_acc, test = predict(net, split.test, cfg.batch_size, device)
        _, _, val = predict(net, split.val, cfg.batch_size, device)
    confusion = _confusion(test.labels, test.preds, cfg.num_classes)
    return Result(te_acc, te_loss, state.best["acc"], state.best["epoch"], trainable, total,
                  time.perf_counter() - state.started, state.history, confusion, {"val": val, "test": test},
                  io.bytes, io.seconds)


@torch.no_grad()
def predict(net: nn.Module, split: Split, batch_size: int, device: torch.device
            ) -> tuple[float, float, Prediction]:
    """(loss, acc %, per-clip prediction) of ``net`` on ``split``: ``run_epoch``'s arithmetic, plus
    the softmax probabilities of every clip."""
    net.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    probs, preds = [], []
    for start in range(0, len(split), batch_size):
        x = split.images[start:start + batch_size].to(device, non_blocking=True)
        y = split.labels[start:start + batch_size].to(device, non_blocking=True)
        with autocast(device):
            logits = net(x)
            loss = nn.functional.cross_entropy(logits, y)
        loss_sum += loss.detach().double() * len(y)
        probs.append(torch.softmax(logits.float(), dim=1))
        preds.append(logits.argmax(1))
    labels, pred = split.labels.cpu(), torch.cat(preds).cpu()
    acc = 100.0 * (pred == labels).sum().item() / len(split)
    return loss_sum.item() / len(split), acc, Prediction(list(split.clip_ids), labels, pred,
                                                          torch.cat(probs).cpu())


def _confusion(labels: torch.Tensor, preds: torch.Tensor, n: int) -> list[list[int]]:
    flat = torch.bincount(labels * n + preds, minlength=n * n)
    return flat.view(n, n).tolist()


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM raises ``Terminated``: runs end KILLED, checkpoints are kept."""
    def handler(signum, frame):
        raise Terminated("SIGTERM")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals to whoever owns them
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

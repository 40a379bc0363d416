"""Recipe settings that shape the optimiser: layer-wise lr decay (parameter groups by name) and
LP-FT (a head-only phase, then the mode's trainable set, resumable across the switch)."""

from __future__ import annotations

from dataclasses import asdict, replace

import pytest
import torch
from test_optim import CFG, _data

from transfer_freezing import config
from transfer_freezing.errors import UserError
from transfer_freezing.model import freezing, layer_decay
from transfer_freezing.train import checkpoint
from transfer_freezing.train import core as training
from transfer_freezing.train import stage as train_stage
from transfer_freezing.train.hooks import Faults

from conftest import write_params

LR = 1e-3


def _groups(model: str, decay: float, mode: str = "freeze_none") -> dict[str, tuple[float, int]]:
    return {r["group"]: (r["lr"], r["trainable"]) for r in layer_decay.describe(model, decay, LR, mode)}


def test_vit_b_16_layer_decay_groups_have_the_pinned_learning_rates():
    got = _groups("vit_b_16", 0.75)

    want = {"stem": (LR * 0.75**13, 742_656),  # conv_proj, pos_embedding, class_token: below block 0
            **{f"block_{i:02d}": (LR * 0.75 ** (12 - i), 7_087_872) for i in range(12)},
            "head": (LR, 9_226)}  # heads.head + the final LayerNorm that feeds it
    assert list(got) == list(want)
    for name, (lr, count) in want.items():
        assert got[name][0] == pytest.approx(lr, rel=1e-12) and got[name][1] == count, name
    assert got["block_00"][0] == pytest.approx(3.1676352e-05)
    assert got["stem"][0] == pytest.approx(2.3757264e-05)
    assert sum(count for _, count in got.values()) == 85_806_346  # every parameter, exactly once


def test_resnet_50_layer_decay_groups_are_its_stages():
    got = _groups("resnet50", 0.5)

    counts = (9_536, 215_808, 1_219_584, 7_098_368, 14_964_736, 20_490)  # stem, layer1-4, fc
    want = dict(zip(["stem", "block_00", "block_01", "block_02", "block_03", "head"],
                    [(LR * 0.5 ** (5 - j), n) for j, n in enumerate(counts)], strict=True))
    assert got == want  # lr * 0.5**k: exact in binary floating point
    assert [r["prefixes"] for r in layer_decay.describe("resnet50", 0.5, LR)][1] == ("layer1",)


def test_frozen_parameters_are_in_no_group_and_decay_1_is_one_group():
    got = _groups("vit_b_16", 0.75, "freeze_patch_0_5")
    assert list(got) == ["stem", *(f"block_{i:02d}" for i in range(6, 12)), "head"]
    assert got["stem"] == (pytest.approx(LR * 0.75**13), 768)  # the class token trains in this mode
    assert sum(n for _, n in got.values()) == 42_537_226
    assert _groups("vit_b_16", 1.0, "freeze_patch_0_5") == {"all": (LR, 42_537_226)}


def test_the_optimiser_follows_the_groups_and_the_schedule_scales_each():
    cfg = replace(CFG, layer_decay=0.5, schedule="cosine", warmup_epochs=1)
    model, opt, _, _ = training.setup(cfg, torch.device("cpu"))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}

    blocks = range(6, 12)  # freeze_patch_0_5 trains the class token (stem), blocks 6-11 and the head
    assert [g["name"] for g in opt.param_groups] == ["stem", *(f"block_{i:02d}" for i in blocks), "head"]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == trainable
    sched = training.scheduler(cfg, opt, train_clips=24)
    start = [g["lr"] for g in opt.param_groups]
    warm = 0.01 / 3  # the first step of a one-epoch warm-up over 3 batches
    assert start == pytest.approx([warm * 0.5**13, *(warm * 0.5 ** (12 - i) for i in blocks), warm])
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2 * lr for lr in start])  # warm-up 2/3


def test_a_run_logs_its_groups_and_the_recipe_carries_both_settings(tmp_path):
    p = config.load(write_params(tmp_path), ["train.layer_decay=0.65", "train.lp_epochs=1"])
    cfg = train_stage.run_config(p, "resnet_demo", "freeze_0_1", 1, 0.01, 3)
    assert (cfg.layer_decay, cfg.lp_epochs) == (0.65, 1)
    rows = train_stage.lr_groups(cfg)
    assert [r["group"] for r in rows] == ["block_01", "block_02", "block_03", "head"]
    assert rows[0]["lr"] == pytest.approx(0.01 * 0.65**3) and rows[0]["prefixes"] == ["layer2"]


@pytest.mark.parametrize(("overrides", "message"), [
    (["train.layer_decay=0"], "train.layer_decay = 0.0 is not allowed; expected a number in (0, 1]"),
    (["train.layer_decay=1.2"], "train.layer_decay = 1.2 is not allowed"),
    (["train.clip_grad_norm=-1"], "train.clip_grad_norm = -1.0 is not allowed; expected a number >= 0"),
    (["train.lp_epochs=2"], "train.lp_epochs = 2 must be below train.epochs = 2"),
    (["train.epochs=6", "train.lp_epochs=2", "train.warmup_epochs=2"],
     "train.warmup_epochs = 2 must be below both LP-FT phases"),
])
def test_bad_recipe_values_give_one_line(tmp_path, overrides, message):
    with pytest.raises(UserError) as err:
        config.load(write_params(tmp_path), overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("clip", [0.0, 0.05, 1e3])
def test_clip_grad_norm_bounds_each_steps_update(tmp_path, clip):
    # train.clip_grad_norm reaches the run config by name (a recipe may set it), and with plain SGD
    # at lr 1 one batch's update is the clipped gradient: its global norm min(clip, |g|).
    p = config.load(write_params(tmp_path), [f"train.clip_grad_norm={clip}"])
    assert train_stage.run_config(p, "vit_demo", "freeze_none", 1, 1.0, 10).clip_grad_norm == clip
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 4)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    full = torch.linalg.vector_norm(torch.cat([q.grad.flatten() for q in net.parameters()])).item()
    before = [q.detach().clone() for q in net.parameters()]
    split = training.Split(images=x, labels=y, clip_ids=[str(i) for i in range(16)])
    training.run_epoch(net, split, 16, torch.device("cpu"), torch.optim.SGD(net.parameters(), lr=1.0),
                       clip_grad_norm=clip)
    step = torch.linalg.vector_norm(torch.cat([(q - b).flatten() for q, b in zip(net.parameters(), before,
                                                                                 strict=True)])).item()
    assert step == pytest.approx(min(clip, full) if clip else full, rel=1e-5)
    assert full > 0.05  # the middle case clips


def test_phases_split_the_epochs():
    assert training.phases(replace(CFG, epochs=5)) == [training.Phase("mode", 0, 5)]
    assert training.phases(replace(CFG, epochs=5, lp_epochs=2)) == [training.Phase("head", 0, 2),
                                                                   training.Phase("mode", 2, 5)]


def test_the_head_phase_freezes_the_backbone_and_its_batchnorm_then_gives_both_back():
    cfg = replace(CFG, model="resnet_demo", freeze="freeze_0")
    model, _, _ = checkpoint.initial_model(asdict(cfg), cfg.torch_seed)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    bn = model.layer1[0].bn1

    with training.trainable_set(cfg, model, training.Phase("head", 0, 1)):
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
        assert type(model.layer1[0].bn1).__name__ == "FrozenBatchNorm2d"  # statistics stop too

    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert model.layer1[0].bn1 is bn  # the same module: a later optimiser sees the model as built
    assert freezing.backbone("resnet_demo") == ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


class _Watch(Faults):
    """Faults, and the backbone's state dict at the end of every epoch."""

    def __init__(self, **faults):
        super().__init__(**faults)
        self.backbone: dict[int, dict[str, torch.Tensor]] = {}

    def epoch_end(self, epoch, state):
        self.backbone[epoch] = {k: v.clone() for k, v in state.model.state_dict().items()
                                if not k.startswith("fc.") and "num_batches" not in k}
        super().epoch_end(epoch, state)


@pytest.mark.slow
def test_lp_ft_trains_the_head_first_and_resumes_across_the_switch_to_identical_metrics(tmp_path, capsys):
    cfg = replace(CFG, model="resnet_demo", freeze="freeze_none", lp_epochs=1)
    data = _data()
    start, _, _ = checkpoint.initial_model(asdict(cfg), cfg.torch_seed)
    initial = {k: v for k, v in start.state_dict().items()
               if not k.startswith("fc.") and "num_batches" not in k}

    watch = _Watch()
    whole = training.fit(cfg, data, tmp_path / "whole", hooks=watch)

    out = capsys.readouterr().out
    assert "activation cache: stages up to pool are constant" in out  # the head-only phase is cached
    assert "phase head: epochs 1-1" in out and "phase mode: epochs 2-3" in out
    assert all(torch.equal(watch.backbone[0][k], v) for k, v in initial.items())  # weights and BN stats
    assert not all(torch.equal(watch.backbone[1][k], v) for k, v in initial.items())
    for epoch in (1, 2):  # cut at the switch (fresh optimiser) and inside the second phase (its state)
        folder = tmp_path / f"cut{epoch}"
        with pytest.raises(RuntimeError, match="injected failure"):
            training.fit(cfg, data, folder, hooks=Faults(fail_in_epoch=epoch))
        resumed = training.fit(cfg, data, folder)
        assert resumed.history == whole.history, epoch
        assert (resumed.test_acc, resumed.test_loss) == (whole.test_acc, whole.test_loss)


def test_tfreeze_models_lists_every_groups_lr_and_refuses_a_bad_decay_in_one_line(capsys):
    from transfer_freezing import cli

    argv = ["models", "--describe", "--model", "vit_b_16", "--layer-decay", "0.75", "--lr", "1e-3"]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "vit_b_16 freeze_none, train.layer_decay = 0.75, lr = 0.001: 14 parameter group(s)"
    assert lines[1].split()[:5] == ["stem", "x", "0.0237573", "lr", "2.376e-05"]
    assert lines[-1].split()[:5] == ["head", "x", "1", "lr", "0.001"]

    assert cli.main(["models", "--model", "resnet50", "--layer-decay", "1.5"]) == 2
    err = capsys.readouterr().err
    assert "layer_decay = 1.5 is not allowed" in err and err.count("\n") == 1

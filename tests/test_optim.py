"""Optimiser and lr-schedule controls: AdamW, cosine with linear warm-up, exact resume, bad values."""

import math
import os
import signal
from dataclasses import replace

import pytest
import torch

from transfer_freezing import config
from transfer_freezing.data.inputs import Split
from transfer_freezing.errors import Terminated, UserError
from transfer_freezing.grid import LAST
from transfer_freezing.train import checkpoint
from transfer_freezing.train import core as training
from transfer_freezing.train import stage as train_stage
from transfer_freezing.train.hooks import Faults, Hooks

from conftest import write_params

SIZE = 32
CFG = training.RunConfig("vit_demo", "freeze_patch_0_5", 1, epochs=3, batch_size=8, lr=0.01,
                         image_size=SIZE, num_classes=3, device="cpu")


def _data() -> training.Data:
    gen = torch.Generator().manual_seed(0)

    def split(n: int, name: str) -> Split:
        labels = torch.arange(n) % 3
        images = torch.rand(n, SIZE, SIZE, generator=gen) * 0.5 + labels[:, None, None] * 0.25
        return Split(images.half(), labels, [f"{name}{i}" for i in range(n)])

    return training.Data(split(24, "tr"), split(12, "va"), split(12, "te"))  # 3 batches per epoch


def test_lr_factor_is_linear_warm_up_then_half_cosine_to_zero():
    factors = [training.lr_factor(s, warmup_steps=4, total_steps=12, schedule="cosine") for s in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[8] == pytest.approx(0.5)  # half-way through the cosine
    assert factors[11] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert training.lr_factor(12, 4, 12, "cosine") == pytest.approx(0.0)
    assert [training.lr_factor(s, 2, 12, "none") for s in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_the_optimiser_steps_with_the_scheduled_lr():
    cfg = replace(CFG, schedule="cosine", warmup_epochs=1)
    model, opt, _, _ = training.setup(cfg, torch.device("cpu"))
    sched = training.scheduler(cfg, opt, train_clips=24)
    seen = []
    for _ in range(9):  # 3 epochs x 3 batches
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    want = [0.01 / 3, 0.02 / 3, 0.01] + [0.01 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert seen == pytest.approx(want, rel=1e-12)
    assert training.scheduler(CFG, opt, 24) is None  # the default: a constant lr, no scheduler


def test_defaults_are_sgd_with_momentum_and_adamw_uses_the_configured_weight_decay():
    _, sgd, _, _ = training.setup(CFG, torch.device("cpu"))
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9
    _, adamw, _, _ = training.setup(replace(CFG, optimizer="adamw", weight_decay=0.05), torch.device("cpu"))
    assert type(adamw) is torch.optim.AdamW and adamw.defaults["weight_decay"] == 0.05
    assert adamw.defaults["betas"] == (0.9, 0.999)


def test_adamw_and_cosine_runs_train_and_differ_from_sgd(tmp_path):
    data = _data()
    runs = {name: training.fit(cfg, data, tmp_path / name) for name, cfg in {
        "sgd": CFG, "adamw": replace(CFG, optimizer="adamw", lr=1e-3),
        "cosine": replace(CFG, schedule="cosine", warmup_epochs=1)}.items()}
    losses = {name: [r["train_loss"] for r in run.history] for name, run in runs.items()}
    assert len({tuple(v) for v in losses.values()}) == 3
    for name, loss in losses.items():
        assert loss[-1] < loss[0], name  # each one learns
    assert [r["lr"] for r in runs["sgd"].history] == [0.01] * 3
    assert [r["lr"] for r in runs["cosine"].history] == pytest.approx([0.01 / 3, 0.01, 0.005])


def whole_and_resumed(cfg, data, tmp_path):
    """``cfg`` trained whole, and again failed in epoch 2 then resumed: asserts the two agree
    (every epoch's row, the test accuracy and loss); returns (whole, resumed)."""
    whole = training.fit(cfg, data, tmp_path / "whole")
    with pytest.raises(RuntimeError, match="injected failure"):
        training.fit(cfg, data, tmp_path / "cut", hooks=Faults(fail_in_epoch=2))
    resumed = training.fit(cfg, data, tmp_path / "cut")
    assert resumed.history == whole.history
    assert (resumed.test_acc, resumed.test_loss) == (whole.test_acc, whole.test_loss)
    return whole, resumed


def test_an_interrupted_cosine_run_resumes_to_the_uninterrupted_result(tmp_path):
    cfg = replace(CFG, optimizer="adamw", lr=1e-3, schedule="cosine", warmup_epochs=1)
    whole_and_resumed(cfg, _data(), tmp_path)


class _SigtermAt(Hooks):
    """SIGTERM to this process as epoch ``epoch`` starts: the run must finish that epoch first."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def epoch_start(self, epoch: int) -> None:
        if epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_ends_the_epoch_writes_the_state_and_the_run_resumes_exactly(tmp_path):
    data = _data()
    whole = training.fit(CFG, data, tmp_path / "whole")
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated, match="SIGTERM"):  # no state is due but the one SIGTERM asks for
        training.fit(CFG, data, tmp_path / "cut", checkpoint_seconds=float("inf"), hooks=_SigtermAt(1))
    assert signal.getsignal(signal.SIGTERM) is before
    assert checkpoint.checkpoint_epoch(tmp_path / "cut" / LAST) == 1  # the second epoch, finished
    assert not (tmp_path / "cut" / "model.pt").exists()
    resumed = training.fit(CFG, data, tmp_path / "cut")
    assert resumed.history == whole.history
    assert (resumed.test_acc, resumed.test_loss) == (whole.test_acc, whole.test_loss)


def test_run_config_carries_the_optimiser_schedule_and_augmentation_params(tmp_path):
    p = config.load(write_params(tmp_path), ["train.optimizer=adamw", "train.schedule=cosine",
                                             "train.warmup_epochs=1", "train.augment=true",
                                             "train.augment_freq_mask=8"])
    cfg = train_stage.run_config(p, "vit_demo", "freeze_none", 1, 0.01, 3)
    assert (cfg.optimizer, cfg.schedule, cfg.warmup_epochs) == ("adamw", "cosine", 1)
    assert (cfg.augment, cfg.augment_time_shift, cfg.augment_freq_mask, cfg.augment_time_mask) == (
        True, 10, 8, 30)
    assert cfg.key() != train_stage.run_config(config.load(tmp_path / "params.yaml"), "vit_demo",
                                               "freeze_none", 1, 0.01, 3).key()


def test_label_smoothing_is_the_training_loss_only_and_comes_from_the_recipe(tmp_path):
    p = config.load(write_params(tmp_path), ["train.label_smoothing=0.2"])
    assert train_stage.run_config(p, "vit_demo", "freeze_none", 1, 0.01, 3).label_smoothing == 0.2
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(SIZE * SIZE, 3))
    split = _data().train
    frozen = torch.optim.SGD(net.parameters(), lr=0.0)  # a training pass that leaves the weights as they are
    with torch.no_grad():
        logits = net(split.images.float())
    cpu = torch.device("cpu")
    x = Split(split.images.float(), split.labels, split.clip_ids)
    smoothed, _, _ = training.run_epoch(net, x, 8, cpu, frozen, label_smoothing=0.2)
    want = torch.nn.functional.cross_entropy(logits, split.labels, label_smoothing=0.2).item()
    assert smoothed == pytest.approx(want, rel=1e-6)
    plain, _, _ = training.run_epoch(net, x, 8, cpu)  # evaluation: the plain cross-entropy
    assert plain == pytest.approx(torch.nn.functional.cross_entropy(logits, split.labels).item(), rel=1e-6)
    assert smoothed != pytest.approx(plain, rel=1e-6)


@pytest.mark.parametrize(("override", "message"), [
    ("train.optimizer=adam", "train.optimizer = 'adam' is not allowed; expected one of sgd, adamw"),
    ("train.schedule=step", "train.schedule = 'step' is not allowed; expected one of none, cosine"),
    ("train.warmup_epochs=-1", "train.warmup_epochs = -1 is not allowed; expected an integer >= 0"),
    ("train.warmup_epochs=2", "train.warmup_epochs = 2 must be below train.epochs = 2"),
    ("train.augment=yes please", "train.augment = 'yes please' is not allowed; expected true or false"),
    ("train.augment_time_mask=2.5", "train.augment_time_mask = 2.5 is not allowed; expected an integer"),
    ("keep.weights=some",
     "keep.weights = 'some' is not allowed; expected one of all, first_seed, none"),
])
def test_bad_values_give_one_line(tmp_path, override, message):
    with pytest.raises(UserError) as err:
        config.load(write_params(tmp_path), [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_warm_up_longer_than_the_sweep_trials_gives_one_line(tmp_path):
    params = write_params(tmp_path)
    with pytest.raises(UserError) as err:
        config.load(params, ["train.epochs=4", "train.warmup_epochs=2", "sweep.epochs=2"])
    assert "train.warmup_epochs = 2 must be below sweep.epochs = 2" in str(err.value)
    assert config.load(params, ["train.epochs=4", "train.warmup_epochs=2", "sweep.epochs=3"])
    assert config.load(params, ["train.epochs=4", "train.warmup_epochs=2", "sweep.epochs=2",
                                "grid.tuned_models=[]"])  # no tuned-lr grid: no sweep trials


def test_sweep_trials_take_the_optimiser_and_schedule_and_start_their_own_study(tmp_path):
    from transfer_freezing.train import sweep

    base = config.load(write_params(tmp_path))
    s = sweep.SweepConfig.from_params(base)
    names = set()
    for extra in ([], ["train.optimizer=adamw"], ["train.schedule=cosine"], ["train.augment=true"]):
        p = config.load(tmp_path / "params.yaml", extra)
        cfg = train_stage.run_config(p, "vit_demo", "freeze_none", s.seeds[0], 0.01, 3, epochs=s.epochs)
        names.add(sweep.study_name(cfg, s, "data", "code"))
    assert len(names) == 4

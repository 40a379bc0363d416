"""Training-time augmentation: the original's three operations on the right axes, seeded, resumable."""

from dataclasses import replace

import pytest
import torch

from transfer_freezing.data.inputs import Split
from transfer_freezing.grid import LAST
from transfer_freezing.train import augment as aug
from transfer_freezing.train import core as training
from transfer_freezing.train.hooks import Faults

SIZE = 32


def _only(**sizes) -> aug.Augment:
    off = {"time_shift": 0, "freq_mask": 0, "time_mask": 0}
    return aug.Augment(aug.AugmentConfig(**{**off, **sizes}), seed=3)


def test_frequency_mask_zeroes_whole_rows_of_at_most_its_size():
    images = torch.ones(256, SIZE, SIZE)  # (B, H = mel bins, W = frames)
    out = _only(freq_mask=20)(images, epoch=0, step=0)
    rows = (out == 0).all(dim=2)  # (B, H): a masked mel bin is zero at every frame
    assert torch.equal((out == 0), rows[:, :, None].expand_as(out))  # nothing but whole rows
    widths = rows.sum(1)
    assert widths.max() <= 19 and widths.max() >= 15 and (widths == 0).any()
    for row in rows[widths > 0]:  # one contiguous band per example
        hit = row.nonzero().flatten()
        assert hit.max() - hit.min() + 1 == len(hit)


def test_time_mask_zeroes_whole_columns_of_at_most_its_size():
    images = torch.ones(256, SIZE, 64)
    out = _only(time_mask=30)(images, epoch=0, step=0)
    cols = (out == 0).all(dim=1)  # (B, W): a masked frame is zero in every mel bin
    assert torch.equal((out == 0), cols[:, None, :].expand_as(out))
    widths = cols.sum(1)
    assert widths.max() <= 29 and widths.max() >= 25
    assert len(set(widths.tolist())) > 10  # per example (iid), not one mask for the batch


def test_time_shift_is_circular_along_time_and_within_its_range():
    images = torch.arange(SIZE, dtype=torch.float32).expand(256, SIZE, SIZE).clone()
    images += torch.arange(256)[:, None, None] * 100  # every example distinct
    out = _only(time_shift=10)(images, epoch=0, step=0)
    shifts = set()
    for before, after in zip(images, out, strict=True):
        found = [s for s in range(-10, 11) if torch.equal(torch.roll(before, s, dims=1), after)]
        assert len(found) == 1  # a roll along W (time), nothing along H, nothing lost
        shifts.add(found[0])
    assert shifts == set(range(-10, 11))


def test_augmentation_keeps_the_stored_dtype_and_is_seeded_by_run_epoch_and_batch():
    stored = (torch.rand(32, SIZE, SIZE) * 255).to(torch.uint8)
    full = aug.Augment(aug.AugmentConfig(), seed=1)
    out = full(stored, epoch=0, step=0)
    assert out.dtype == torch.uint8 and not torch.equal(out, stored)
    assert torch.equal(out, aug.Augment(aug.AugmentConfig(), seed=1)(stored, epoch=0, step=0))
    other_seed = aug.Augment(aug.AugmentConfig(), seed=2)
    for other in (other_seed(stored, 0, 0), full(stored, 1, 0), full(stored, 0, 1)):
        assert not torch.equal(out, other)
    before = torch.get_rng_state()
    full(stored.half(), 0, 0)
    assert torch.equal(torch.get_rng_state(), before)  # the run's own streams are untouched


# --------------------------------------------------------------------------- in the training loop

def _data(n_train: int = 24) -> training.Data:
    gen = torch.Generator().manual_seed(0)

    def split(n: int, name: str) -> Split:
        labels = torch.arange(n) % 3
        images = torch.rand(n, SIZE, SIZE, generator=gen) * 0.5 + labels[:, None, None] * 0.25
        return Split(images.half(), labels, [f"{name}{i}" for i in range(n)])

    return training.Data(split(n_train, "tr"), split(12, "va"), split(12, "te"))


CFG = training.RunConfig("vit_demo", "freeze_patch_0_5", 1, epochs=3, batch_size=8, lr=0.01,
                         image_size=SIZE, num_classes=3, device="cpu", augment=True)


def _fit(cfg: training.RunConfig, tmp_path, name: str, data: training.Data | None = None, **kw):
    return training.fit(cfg, data or _data(), tmp_path / name, **kw)


def test_augmented_runs_repeat_exactly_and_differ_from_plain_runs(tmp_path):
    first, second = _fit(CFG, tmp_path, "a"), _fit(CFG, tmp_path, "b")
    assert first.history == second.history and first.test_acc == second.test_acc
    plain = _fit(replace(CFG, augment=False), tmp_path, "c")
    assert [r["train_loss"] for r in plain.history] != [r["train_loss"] for r in first.history]


def test_the_activation_cache_turns_itself_off_with_augmentation(tmp_path, capsys):
    probe = replace(CFG, freeze="freeze_patch_0_11", epochs=1)  # every block constant: cacheable
    _fit(replace(probe, augment=False), tmp_path, "plain")
    assert "activation cache: stages up to" in capsys.readouterr().out
    _fit(probe, tmp_path, "augmented")
    said = capsys.readouterr().out
    assert "activation cache: off, train.augment changes the input images" in said
    assert "stages up to" not in said
    _fit(replace(probe, augment_time_shift=0, augment_freq_mask=0, augment_time_mask=0), tmp_path, "none")
    assert "activation cache: stages up to" in capsys.readouterr().out  # all three sizes 0: no change


def test_only_training_batches_are_augmented(tmp_path, monkeypatch):
    seen: list[tuple[str, torch.Tensor]] = []
    data = _data()
    stored = {name: s.images.clone() for name, s in data.splits().items()}
    original = training.Plain.forward

    def spy(self, images):
        seen.append(images.clone())
        return original(self, images)

    monkeypatch.setattr(training.Plain, "forward", spy)
    training.fit(replace(CFG, epochs=1), data, tmp_path / "run")
    # one epoch: 3 training batches, then val (2 batches), then predict on test and val
    train_batches, rest = seen[:3], seen[3:]
    train_stored = torch.cat([stored["train"][i:i + 8] for i in range(0, 24, 8)])
    assert not torch.equal(torch.sort(torch.cat(train_batches).flatten())[0],
                           torch.sort(train_stored.flatten())[0])  # changed pixels, not just order
    expect = [stored["val"][:8], stored["val"][8:], stored["test"][:8], stored["test"][8:],
              stored["val"][:8], stored["val"][8:]]
    assert len(rest) == len(expect) and all(torch.equal(a, b) for a, b in zip(rest, expect, strict=True))
    assert all(torch.equal(data.splits()[k].images, v) for k, v in stored.items())  # no in-place edit


def test_an_interrupted_augmented_run_resumes_to_the_uninterrupted_result(tmp_path):
    whole = _fit(CFG, tmp_path, "whole")
    with pytest.raises(RuntimeError, match="injected failure"):  # after epoch 2's resumable state
        _fit(CFG, tmp_path, "cut", hooks=Faults(fail_in_epoch=2))
    assert (tmp_path / "cut" / LAST).is_file()
    resumed = _fit(CFG, tmp_path, "cut")
    assert resumed.history == whole.history
    assert (resumed.test_acc, resumed.test_loss, resumed.best_epoch) == (whole.test_acc, whole.test_loss,
                                                                          whole.best_epoch)

"""The pretrain stage: FractalDB-style fractals as a source task, and weights the train stages load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transfer_freezing import config
from transfer_freezing.data import fractals
from transfer_freezing.errors import UserError
from transfer_freezing.model import registry as models
from transfer_freezing.train import pretrain


def test_fractals_are_deterministic_grey_images_of_distinct_classes():
    x, y = fractals.dataset(classes=4, per_class=6, size=32, points=800, seed=3)
    again, _ = fractals.dataset(classes=4, per_class=6, size=32, points=800, seed=3)
    other, _ = fractals.dataset(classes=4, per_class=6, size=32, points=800, seed=4)
    assert x.shape == (24, 32, 32) and x.dtype == np.float32
    assert list(y) == [c for c in range(4) for _ in range(6)]
    assert np.array_equal(x, again) and not np.array_equal(x, other)
    assert x.min() == 0.0 and np.allclose(x.max(axis=(1, 2)), 1.0)
    # An instance is closer to its own class's mean image (up to the flip) than to the other classes'.
    sym = (x + x[:, :, ::-1]) / 2
    means = np.stack([sym[y == c].mean(0) for c in range(4)])
    nearest = np.argmin(((sym[:, None] - means[None]) ** 2).sum(axis=(2, 3)), axis=1)
    assert (nearest == y).mean() > 0.5


TINY = {"classes": 4, "images_per_class": 8, "points": 300, "epochs": 1, "batch_size": 16,
        "lr": 1e-3, "weight_decay": 0.05, "seed": 0}


def test_pretrain_writes_weights_the_train_stages_load(tmp_path):
    p = {"pretrain": {**TINY, "models": ["vit_demo"], "out": str(tmp_path / "pre")},
         "features": {"image_size": 32}, "runtime": {"device": "cpu"}}
    report = pretrain.run(p)
    first = torch.load(tmp_path / "pre" / "vit_demo.pt", weights_only=True)
    assert set(json.loads((tmp_path / "pre" / "pretrain.json").read_text())) == {"vit_demo"}
    assert 0 <= report["vit_demo"]["source_val_acc"] <= 100 and report["vit_demo"]["chance_acc"] == 25.0
    pretrain.run(p)  # deterministic on CPU
    again = torch.load(tmp_path / "pre" / "vit_demo.pt", weights_only=True)
    assert all(torch.equal(first[k], again[k]) for k in first)
    net = models.build("vit_demo", 10, 32, weights=str(tmp_path / "pre" / "{model}.pt"))
    key = "encoder.layers.encoder_layer_5.mlp.0.weight"
    assert torch.equal(net.encoder.layers[5].mlp[0].weight, first[key])
    assert first["heads.head.weight"].shape[0] == 4 and net.heads.head.out_features == 10

    p["pretrain"]["models"] = []  # a model no longer listed leaves no file behind
    pretrain.run(p)
    assert sorted(f.name for f in (tmp_path / "pre").iterdir()) == ["pretrain.json"]


def test_loading_pretrain_output_needs_the_model_pretrained():
    with pytest.raises(UserError, match=r"train.weights = pretrain/\{model\}.pt but pretrain.models "
                                        "lacks vit_demo; allowed: add them to pretrain.models"):
        config.load("params.yaml", ["train.weights=pretrain/{model}.pt", "pretrain.models=[]"])

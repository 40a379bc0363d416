"""Model registry, freeze modes as data, and ImageNet weights through torchvision's own cache."""

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from transfer_freezing.errors import UserError
from transfer_freezing.model import catalogue, freezing
from transfer_freezing.model import registry as models

VIT_B_16 = {  # DESIGN.md, 10-class head
    "freeze_none": 85_806_346, "freeze_patch": 85_064_458, "freeze_patch_0_2": 63_800_842,
    "freeze_patch_0_5": 42_537_226, "freeze_patch_0_8": 21_273_610, "freeze_patch_0_11": 7_690,
}
RESNET50 = {
    "freeze_none": 23_528_522, "freeze_0": 23_518_986, "freeze_0_1": 23_303_178,
    "freeze_0_1_2": 22_083_594, "freeze_0_1_2_3": 14_985_226, "freeze_0_1_2_3_4": 20_490,
}


@pytest.mark.parametrize(("name", "expected"), [("vit_b_16", VIT_B_16), ("resnet50", RESNET50)])
def test_trainable_counts_match_the_design(name, expected):
    counts = {r["mode"]: r["trainable"] for r in catalogue.rows(name) if r["mode"] in expected}
    assert counts == expected  # every strategy's count: test_strategies.py


def test_freeze_applies_the_same_counts_as_the_catalogue():
    net = models.build("vit_demo", 10, image_size=32)
    trainable, total = freezing.freeze(net, freezing.prefixes("vit_demo", "freeze_patch_0_5"))
    row = next(r for r in catalogue.rows("vit_demo") if r["mode"] == "freeze_patch_0_5")
    assert trainable == row["trainable"]
    assert net.class_token.requires_grad  # the original left the class token trainable


def test_generic_vit_mode_freezes_patch_and_first_k_blocks():
    plan = freezing.plan("vit_demo", "freeze_patch_0_3")
    assert plan.frozen_blocks == 4
    assert plan.prefixes[-1] == "encoder.layers.encoder_layer_3"


@pytest.mark.parametrize("mode", ["freeze_all", "freeze_patch_0_12", "freeze_0"])
def test_unknown_mode_lists_the_valid_ones(mode):
    with pytest.raises(UserError, match="valid: freeze_none, freeze_patch, "):
        freezing.plan("vit_demo", mode)


def test_frozen_batchnorm_stops_running_statistics():
    net = models.build("resnet_demo", 10)
    freezing.freeze(net, freezing.prefixes("resnet_demo", "freeze_0_1"))
    assert isinstance(net.bn1, FrozenBatchNorm2d)
    assert isinstance(net.layer1[0].bn1, FrozenBatchNorm2d)
    assert isinstance(net.layer2[0].bn1, nn.BatchNorm2d)
    before = net.bn1.running_mean.clone()
    net.train()
    net(torch.randn(4, 3, 64, 64))
    assert torch.equal(net.bn1.running_mean, before)


def test_original_batchnorm_behaviour_keeps_updating_statistics():
    net = models.build("resnet_demo", 10)
    freezing.freeze(net, freezing.prefixes("resnet_demo", "freeze_0_1"), freeze_bn_stats=False)
    assert not net.bn1.weight.requires_grad
    before = net.bn1.running_mean.clone()
    net.train()
    net(torch.randn(4, 3, 64, 64))
    assert not torch.equal(net.bn1.running_mean, before)


def test_imagenet_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = models.REGISTRY["resnet50"].build(224)
    path = models.cache_file("resnet50")
    assert path.parent == tmp_path / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    net = models.build("resnet50", 10, weights="imagenet")
    assert torch.equal(net.conv1.weight, reference.conv1.weight)
    assert net.fc.out_features == 10


def test_imagenet_weights_from_an_explicit_path(tmp_path):
    reference = models.REGISTRY["resnet50"].build(224)
    path = tmp_path / "r50.pth"
    torch.save(reference.state_dict(), path)
    net = models.build("resnet50", 10, weights="imagenet", weights_path=str(path))
    assert torch.equal(net.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)


def test_missing_weights_offline_names_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as err:
        models.build("vit_b_16", 10, weights="imagenet")
    message = str(err.value)
    assert "vit_b_16-c867db91.pth" in message and str(tmp_path / "hub" / "checkpoints") in message


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(models.REGISTRY["resnet_demo"].build(224).state_dict(), path)
    with pytest.raises(UserError, match="does not fit resnet50"):
        models.build("resnet50", 10, weights="imagenet", weights_path=str(path))


def test_models_command_lists_modes_with_shares():
    text = catalogue.describe("vit_demo", counts=True)
    assert "freeze_patch_0_11" in text and "%" in text

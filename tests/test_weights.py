"""Pretrained weights as a choice: registry entries, their metadata, caches, files and errors.

No download ever happens here: every file is a random state dict saved where the loader looks
(torch hub cache, Hugging Face hub cache layout, an explicit path).
"""

from __future__ import annotations

from functools import partial

import pytest
import torch

from transfer_freezing import config
from transfer_freezing.errors import UserError
from transfer_freezing.model import activation_cache, added, catalogue, freezing
from transfer_freezing.model import registry as models

# DeiT-B/16 (timm) under the freeze families: the same counts as torchvision's ViT-B/16 (DESIGN.md).
DEIT_COUNTS = {"freeze_none": 85_806_346, "freeze_patch": 85_064_458, "freeze_patch_0_2": 63_800_842,
               "freeze_patch_0_5": 42_537_226, "freeze_patch_0_8": 21_273_610, "freeze_patch_0_11": 7_690,
               "bitfit": 110_602, "layernorm": 46_090}


def test_deit_trainable_counts_are_vit_b_16s():
    deit = {r["mode"]: r["trainable"] for r in catalogue.rows("deit_b_16")}
    vit = {r["mode"]: r["trainable"] for r in catalogue.rows("vit_b_16")}
    assert {m: deit[m] for m in DEIT_COUNTS} == DEIT_COUNTS
    assert deit == vit
    text = catalogue.describe("deit_b_16", counts=True)
    assert "freeze_patch_0_5" in text and "42,537,226 trainable" in text
    assert "frozen: patch_embed, pos_embed, blocks.0" in text


def test_deit_stages_are_its_forward():
    torch.manual_seed(0)
    net = models.build("deit_b_16", 10, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(activation_cache.Span(net, activation_cache.stages("deit_b_16"))(x), net(x))


@pytest.mark.parametrize("mode", ["lora_r4_mlp", "adapter_houlsby_w8", "vpt_deep_p3"])
def test_peft_families_attach_to_timms_layout(mode):
    # DeiT-B/16 is timm's module layout (attn.qkv, mlp.fc1/fc2, norm1): LoRA and adapters leave the
    # function unchanged at step 0 there too, prompts change it, and only the added parts train.
    torch.manual_seed(0)
    net = models.build("deit_b_16", 10, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        added.apply(net, freezing.plan("deit_b_16", mode), "deit_b_16")
        after = net(x)
    assert after.shape == before.shape
    assert torch.allclose(after, before, atol=1e-5) == (not mode.startswith("vpt"))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(freezing.added(n) or n.startswith("head.") for n in trainable), trainable


def test_entries_carry_their_librarys_input_size_and_normalisation():
    sizes = {(name, w.name): models.expect(w).image_size
             for name in ("vit_b_16", "resnet50", "deit_b_16") for w in models.spec(name).weights}
    assert sizes == {("vit_b_16", "IMAGENET1K_V1"): 224, ("vit_b_16", "IMAGENET1K_SWAG_E2E_V1"): 384,
                     ("vit_b_16", "IMAGENET1K_SWAG_LINEAR_V1"): 224, ("resnet50", "IMAGENET1K_V2"): 224,
                     ("resnet50", "IMAGENET1K_V1"): 224, ("deit_b_16", "fb_in1k"): 224}
    deit = models.expect(models.entry("deit_b_16", "imagenet"))
    assert deit.mean == (0.485, 0.456, 0.406) and deit.std == (0.229, 0.224, 0.225)
    assert "models--timm--deit_base_patch16_224.fb_in1k" in str(deit.file)


def test_imagenet_is_each_architectures_default():
    assert models.entry("vit_b_16", "imagenet").name == "IMAGENET1K_V1"
    assert models.entry("resnet50", "imagenet").name == "IMAGENET1K_V2"
    assert models.entry("deit_b_16", "imagenet").name == "fb_in1k"
    with pytest.raises(UserError, match="not a weights entry of resnet50; valid: none, imagenet "
                                        r"\(= IMAGENET1K_V2\), IMAGENET1K_V2, IMAGENET1K_V1"):
        models.entry("resnet50", "IMAGENET1K_SWAG_E2E_V1")


def test_a_named_entry_loads_from_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = models.REGISTRY["resnet50"].build(224)
    path = models.cache_file("resnet50", "IMAGENET1K_V1")
    assert path == tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    net = models.build("resnet50", 10, weights="IMAGENET1K_V1")
    assert torch.equal(net.layer4[0].conv1.weight, reference.layer4[0].conv1.weight)
    with pytest.raises(UserError, match="resnet50-11ad3fa6.pth"):  # the default is another file
        monkeypatch.setattr(models, "_torchvision_fetch", _offline)
        models.build("resnet50", 10, weights="imagenet")


def _offline(*args, **kwargs):
    raise UserError("offline")


def _tiny_timm(monkeypatch) -> models.Weights:
    """A small timm ViT registered like deit_b_16 (same source, same cache layout)."""
    weights = models.Weights("fb_in1k", "timm", "timm/deit_tiny_patch16_224.fb_in1k")
    spec = models.ModelSpec(build=partial(models._timm, "deit_tiny_patch16_224"), weights=(weights,),
                            fixed_image_size=None, description="test", **models._TIMM_VIT_PARTS)
    monkeypatch.setitem(models.REGISTRY, "deit_tiny", spec)
    return weights


def test_timm_weights_load_from_the_hugging_face_cache(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    _tiny_timm(monkeypatch)
    reference = models.REGISTRY["deit_tiny"].build(224)
    repo = tmp_path / "models--timm--deit_tiny_patch16_224.fb_in1k"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    save_file(reference.state_dict(), repo / "snapshots" / revision / "model.safetensors")
    net = models.build("deit_tiny", 10, weights="imagenet")
    assert torch.equal(net.blocks[3].attn.qkv.weight, reference.blocks[3].attn.qkv.weight)
    assert net.head.out_features == 10


def test_timm_weights_offline_name_the_hub_cache_file(tmp_path, monkeypatch):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(UserError) as err:
        models.weights_file("deit_b_16", None, "imagenet")
    message = str(err.value)
    where = tmp_path / "models--timm--deit_base_patch16_224.fb_in1k" / "snapshots" / "<revision>"
    assert f"put model.safetensors at {where / 'model.safetensors'}" in message
    assert "hf download timm/deit_base_patch16_224.fb_in1k model.safetensors" in message
    assert "train.weights_path" in message and "\n" not in message


def test_a_state_dict_file_per_model_skips_its_head(tmp_path):
    torch.manual_seed(1)
    source = models.build("vit_demo", 7, image_size=32)  # a pretraining task with 7 classes
    torch.save(source.state_dict(), tmp_path / "vit_demo.pt")
    net = models.build("vit_demo", 10, image_size=32, weights=str(tmp_path / "{model}.pt"))
    assert torch.equal(net.conv_proj.weight, source.conv_proj.weight)
    assert net.heads.head.out_features == 10
    torch.save({"model": source.state_dict()}, tmp_path / "wrapped.pth")  # a training script's checkpoint
    wrapped = models.build("vit_demo", 10, image_size=32, weights=str(tmp_path / "wrapped.pth"))
    assert torch.equal(wrapped.encoder.ln.weight, source.encoder.ln.weight)
    with pytest.raises(UserError, match=r"file .*resnet_demo.pt not found; .*dvc repro pretrain"):
        models.build("resnet_demo", 10, image_size=32, weights=str(tmp_path / "{model}.pt"))


def _params(**sets: object) -> list[str]:
    return [f"{k}={v}" for k, v in sets.items()]


def test_params_name_an_entry_at_its_own_size():
    base = {"grid.models": "[vit_b_16]", "grid.tuned_models": "[]", "features.image_size": 224}
    p = config.load("profiles/paper.yaml", _params(**base, **{"train.weights": "IMAGENET1K_SWAG_LINEAR_V1"}))
    assert p["train"]["weights"] == "IMAGENET1K_SWAG_LINEAR_V1"
    with pytest.raises(UserError, match="vit_b_16's weights IMAGENET1K_SWAG_E2E_V1 expect 384x384 inputs: "
                                        "set features.image_size = 384"):
        config.load("profiles/paper.yaml", _params(**base, **{"train.weights": "IMAGENET1K_SWAG_E2E_V1"}))


def test_params_refuse_weights_normalised_otherwise(monkeypatch):
    real = models.expect

    def other(w):
        return real(w).__class__(**{**real(w).__dict__, "mean": (0.5, 0.5, 0.5)})

    monkeypatch.setattr(models, "expect", other)
    base = {"grid.models": "[deit_b_16]", "grid.tuned_models": "[]", "features.image_size": 224,
            "train.weights": "imagenet"}
    with pytest.raises(UserError, match=r"of deit_b_16 expects inputs normalised with mean \(0.5, 0.5, 0.5"):
        config.load("profiles/paper.yaml", _params(**base))

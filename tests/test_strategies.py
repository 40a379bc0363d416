"""Freeze strategies as data: families (prefix, class-token-frozen prefix, surgical, BitFit, LayerNorm-only),
their exact trainable counts, how they are applied, and which of them the activation cache may use."""

import re
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision.ops import FrozenBatchNorm2d

from transfer_freezing import cli, config
from transfer_freezing.errors import UserError
from transfer_freezing.model import activation_cache as prefix_cache
from transfer_freezing.model import added, catalogue, freezing
from transfer_freezing.model import registry as models
from transfer_freezing.train import core as training
from transfer_freezing.train import stage as train_stage

from conftest import REPO

# Every listed mode with its exact trainable count (10-class head). Prefix modes: DESIGN.md's table
# for the original's depths; BitFit and LayerNorm-only: the counts for ViT-B/16.
VIT_B_16 = {
    "freeze_none": 85_806_346, "freeze_patch": 85_064_458,
    "freeze_patch_0_0": 77_976_586, "freeze_patch_0_1": 70_888_714, "freeze_patch_0_2": 63_800_842,
    "freeze_patch_0_3": 56_712_970, "freeze_patch_0_4": 49_625_098, "freeze_patch_0_5": 42_537_226,
    "freeze_patch_0_6": 35_449_354, "freeze_patch_0_7": 28_361_482, "freeze_patch_0_8": 21_273_610,
    "freeze_patch_0_9": 14_185_738, "freeze_patch_0_10": 7_097_866, "freeze_patch_0_11": 7_690,
    "freeze_patch_cls": 85_063_690, "freeze_patch_0_2_cls": 63_800_074,  # the prefix's count - 768
    "freeze_patch_0_5_cls": 42_536_458, "freeze_patch_0_8_cls": 21_272_842,
    "tune_0_2": 21_271_306, "tune_3_5": 21_271_306, "tune_6_8": 21_271_306, "tune_9_11": 21_271_306,
    "bitfit": 110_602, "layernorm": 46_090,
    # parameter-efficient families (+ the 7,690 head): LoRA q, v: 12 blocks x 2 slices x r (768 + 768);
    # _mlp adds r (768 + 3072) x 2 per block; adapters 2 x 768 w + w + 768 each (Houlsby two per
    # block, Pfeiffer one); prompts p x 768 (shallow once, deep per block)
    "lora_r4": 155_146, "lora_r16": 597_514, "lora_r4_mlp": 523_786,
    "adapter_houlsby_w16": 616_330, "adapter_houlsby_w64": 2_386_954,
    "adapter_pfeiffer_w16": 312_010, "adapter_pfeiffer_w64": 1_197_322,
    "vpt_shallow_p10": 15_370, "vpt_deep_p10": 99_850,
}
RESNET50 = {
    "freeze_none": 23_528_522, "freeze_0": 23_518_986, "freeze_0_1": 23_303_178,
    "freeze_0_1_2": 22_083_594, "freeze_0_1_2_3": 14_985_226, "freeze_0_1_2_3_4": 20_490,
    "tune_1": 236_298, "tune_2": 1_240_074, "tune_3": 7_118_858, "tune_4": 14_985_226,
    "bitfit": 73_610,  # BatchNorm affine 53,120 + fc 20,490
}
FAMILIES = {"freeze_none": "prefix", "freeze_patch_0_5": "prefix", "freeze_patch_0_5_cls": "prefix_cls",
            "tune_0_2": "surgical", "bitfit": "bitfit", "layernorm": "layernorm", "lora_r16": "lora",
            "adapter_pfeiffer_w64": "adapter", "vpt_shallow_p10": "vpt"}


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, dict]]:
    """The catalogue of each architecture, computed once (on the meta device: shapes only)."""
    names = ("vit_b_16", "resnet50", "vit_demo", "resnet_demo")
    return {name: {r["mode"]: r for r in catalogue.rows(name)} for name in names}


@pytest.mark.parametrize(("name", "expected"), [("vit_b_16", VIT_B_16), ("resnet50", RESNET50)])
def test_every_listed_strategy_has_its_pinned_trainable_count(rows, name, expected):
    assert {mode: r["trainable"] for mode, r in rows[name].items()} == expected


def test_families_are_named_in_the_catalogue(rows):
    assert {mode: rows["vit_b_16"][mode]["family"] for mode in FAMILIES} == FAMILIES
    assert rows["resnet50"]["tune_1"]["family"] == "surgical"


def test_the_depth_curve_covers_every_prefix_depth(rows):
    depth = ["freeze_none", "freeze_patch", *(f"freeze_patch_0_{k}" for k in range(12))]
    counts = [rows["vit_b_16"][m]["trainable"] for m in depth]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == 14
    assert [rows["vit_b_16"][m]["frozen_blocks"] for m in depth] == [0, 0, *range(1, 13)]


@pytest.mark.parametrize("name", ["vit_demo", "resnet_demo"])
def test_freeze_on_a_real_model_gives_the_catalogue_counts(rows, name):
    for mode, row in rows[name].items():
        net = models.build(name, 10)  # 224 px, as the catalogue counts (ViT's position embedding)
        plan = freezing.plan(name, mode)
        trainable, _ = added.apply(net, plan, name, freeze_bn_stats=False)
        assert trainable == row["trainable"], mode
        assert all(p.requires_grad != plan.frozen(n) for n, p in net.named_parameters()), mode


def _trainable(name: str, mode: str, freeze_bn_stats: bool = True) -> tuple[nn.Module, set[str]]:
    net = models.build(name, 10, image_size=32)
    freezing.freeze(net, freezing.prefixes(name, mode), freeze_bn_stats=freeze_bn_stats)
    return net, {n for n, p in net.named_parameters() if p.requires_grad}


def test_bitfit_trains_every_bias_and_the_head_only():
    net, trained = _trainable("vit_demo", "bitfit")
    want = {n for n, _ in net.named_parameters() if n.endswith("bias") or n.startswith("heads.head.")}
    assert trained == want and "encoder.layers.encoder_layer_0.self_attention.in_proj_bias" in trained


def test_layernorm_only_trains_layernorm_affines_and_the_head():
    net, trained = _trainable("vit_demo", "layernorm")
    norms = {f"{m}.{leaf}" for m, mod in net.named_modules() if isinstance(mod, nn.LayerNorm)
             for leaf in ("weight", "bias")}
    assert trained == norms | {"heads.head.weight", "heads.head.bias"}
    assert "encoder.ln.weight" in trained and len(norms) == 2 * (2 * 12 + 1)


def test_surgical_trains_a_block_range_and_the_head():
    net, trained = _trainable("vit_demo", "tune_0_2")
    inside = ("encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1",
              "encoder.layers.encoder_layer_2", "heads.head")
    assert trained == {n for n, _ in net.named_parameters() if freezing.under(n, inside)}
    assert not net.class_token.requires_grad and not net.encoder.ln.weight.requires_grad
    assert freezing.plan("vit_demo", "tune_0_2").frozen_blocks == 9
    assert freezing.plan("vit_demo", "tune_4").frozen_blocks == 11  # one block: tune_<a>


def test_class_token_variant_is_the_prefix_plus_the_class_token():
    _, prefix = _trainable("vit_demo", "freeze_patch_0_5")
    net, cls = _trainable("vit_demo", "freeze_patch_0_5_cls")
    assert prefix - cls == {"class_token"} and not net.class_token.requires_grad
    assert freezing.prefixes("vit_demo", "freeze_patch_0_11_cls") == freezing.prefixes(
        "vit_demo", "freeze_patch_0_11")  # the probe freezes the class token already


def test_resnet_bitfit_trains_batchnorm_affines_and_keeps_them_batchnorm():
    net, trained = _trainable("resnet_demo", "bitfit")
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in net.modules())  # trainable: not swapped
    bns = {f"{m}.{leaf}" for m, mod in net.named_modules() if isinstance(mod, nn.BatchNorm2d)
           for leaf in ("weight", "bias")}
    assert trained == bns | {"fc.weight", "fc.bias"} and "layer2.0.downsample.1.weight" in trained


def test_resnet_surgical_freezes_batchnorm_outside_the_trained_stage():
    net, trained = _trainable("resnet_demo", "tune_1")
    assert trained == {n for n, _ in net.named_parameters() if freezing.under(n, ("layer1", "fc"))}
    assert isinstance(net.bn1, FrozenBatchNorm2d) and isinstance(net.layer2[0].bn1, FrozenBatchNorm2d)
    assert isinstance(net.layer1[0].bn1, nn.BatchNorm2d)
    assert not isinstance(net.layer1[0].bn1, FrozenBatchNorm2d)


@pytest.mark.parametrize(("name", "mode", "message"), [
    ("resnet50", "layernorm", "does not apply to resnet50: ResNet has no LayerNorm"),
    ("resnet50", "freeze_patch_0_5_cls", "does not apply to resnet50: ResNet has no class token"),
    ("resnet50", "freeze_0_2", "unknown freeze mode 'freeze_0_2'"),
    ("resnet50", "tune_5", "unknown freeze mode"),
    ("vit_b_16", "tune_12", "unknown freeze mode"),
    ("vit_b_16", "tune_3_1", "unknown freeze mode"),
    ("vit_b_16", "freeze_patch_0_12_cls", "unknown freeze mode"),
])
def test_modes_that_do_not_apply_fail_in_one_line_listing_the_valid_ones(name, mode, message):
    with pytest.raises(UserError) as err:
        freezing.plan(name, mode)
    text = str(err.value)
    assert message in text and "\n" not in text and "valid: freeze_none" in text and "bitfit" in text


def test_config_checks_modes_against_each_model():
    modes = ["freeze_none", "bitfit", "tune_0_2"]
    p = config.validate({"grid.models": ["vit_demo"], "grid.freeze_modes": modes})
    assert p["grid"]["freeze_modes"] == modes
    with pytest.raises(UserError, match="'layernorm' does not apply to resnet_demo"):
        config.validate({"grid.models": ["resnet_demo"], "grid.freeze_modes": ["layernorm"]})


def test_models_describe_prints_family_count_and_share(capsys):
    assert cli.main(["models", "--describe", "--model", "vit_b_16"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"bitfit\s+bitfit\s+110,602 trainable \(\s*0\.13 %\)", out)
    assert re.search(r"layernorm\s+layernorm\s+46,090 trainable \(\s*0\.05 %\)", out)
    assert re.search(r"freeze_patch_0_5_cls\s+prefix_cls\s+42,536,458", out)
    assert re.search(r"tune_0_2\s+surgical\s+21,271,306 trainable .*encoder_layer_2, heads.head", out)


# --------------------------------------------------------------------------- the activation cache

# (model, mode, frozen_bn) -> stages cached (0 = none). The cache is decided from the frozen model:
# a leading stage is cached only when all its parameters are frozen and it does not depend on the
# batch, so BitFit, LayerNorm-only and early surgical ranges (trainable parts in the first block)
# are never cached, while a class-token-frozen prefix or a late surgical range have a true constant
# prefix (patch, tokens, the frozen blocks) and are.
CACHE = [
    ("vit_demo", "bitfit", "eval", 0),  # conv_proj.bias is trainable: nothing is constant
    ("vit_demo", "layernorm", "eval", 0),  # block 0's LayerNorms train
    ("vit_demo", "tune_0_2", "eval", 0),
    ("vit_demo", "freeze_patch_0_5", "eval", 0),  # the trainable class token enters block 0 (as before)
    ("vit_demo", "freeze_patch_cls", "eval", 0),  # patch + tokens only: no block, not worth it
    ("vit_demo", "freeze_patch_0_5_cls", "eval", 8),  # patch, tokens, blocks 0-5
    ("vit_demo", "tune_9_11", "eval", 11),  # patch, tokens, blocks 0-8
    ("resnet_demo", "bitfit", "eval", 0),
    ("resnet_demo", "tune_1", "eval", 0),  # the stem alone is not cached
    ("resnet_demo", "tune_4", "eval", 4),  # stem, layer1-3 (FrozenBatchNorm2d)
    ("resnet_demo", "tune_4", "train", 0),  # BatchNorm in train mode uses batch statistics
    ("resnet_demo", "freeze_0_1", "eval", 2),  # the prefix family keeps its cache
]


@pytest.mark.parametrize(("name", "mode", "frozen_bn", "depth"), CACHE)
def test_cache_depth_of_each_family(name, mode, frozen_bn, depth):
    net, _ = _trainable(name, mode, freeze_bn_stats=frozen_bn == "eval")
    assert prefix_cache.cache_depth(net, prefix_cache.stages(name)) == depth


@pytest.mark.parametrize(("name", "mode"), [(n, m) for n, m, bn, d in CACHE if d])
def test_cached_prefix_gives_the_full_models_logits_and_gradients(name, mode):
    torch.manual_seed(0)
    net, trained = _trainable(name, mode)
    parts = prefix_cache.stages(name)
    depth = prefix_cache.cache_depth(net, parts)
    prefix, rest = prefix_cache.Span(net, parts[:depth]), prefix_cache.Span(net, parts[depth:])
    owned = tuple(name for stage in prefix.parts for name in stage.owns)
    assert not any(p.requires_grad for n, p in net.named_parameters() if freezing.under(n, owned))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 3, 7, 9])
    with torch.no_grad():
        cached = prefix.eval()(x)  # how the cache computes it: once, in eval mode
    net.train()
    F.cross_entropy(rest(cached), y).backward()
    via_cache = {n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad}
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()
    assert set(via_cache) == trained
    for n, p in net.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(via_cache[n], p.grad, msg=n)


# --------------------------------------------------------------------------- the depth curve

def test_the_depth_profile_covers_every_prefix_depth_of_both_architectures_in_one_grid():
    p = config.load(REPO / "profiles" / "depth.yaml")
    vit, resnet = p["grid"], p["grid"]["cells"]
    assert vit["models"] == ["vit_b_16"] and vit["freeze_modes"] == list(VIT_B_16)[:14]  # k = -1 .. 11
    assert resnet == [f"resnet50/{mode}" for mode in list(RESNET50)[:6]]
    grid = train_stage.grid(p)
    assert len(grid) == (14 + 6) * 10 and {c[4] for c in grid} == {"fixed"}
    assert {c[0] for c in grid} == {"vit_b_16", "resnet50"}


def test_a_new_family_trains_end_to_end_without_the_cache(tiny, capsys):
    p = config.load("params.yaml")
    data, meta = train_stage.Workspace.from_params(p).load_data(p["train"]["batch_size"])
    cfg = train_stage.run_config(p, "vit_demo", "bitfit", 1, 0.01, len(meta["classes"]))
    result = training.fit(replace(cfg, epochs=1), data, tiny / "bitfit")
    assert "activation cache" not in capsys.readouterr().out
    net = models.build("vit_demo", len(meta["classes"]), image_size=p["features"]["image_size"])
    assert result.trainable_params == freezing.freeze(net, freezing.plan("vit_demo", "bitfit"))[0]
    assert len(result.history) == 1 and 0 <= result.test_acc <= 100

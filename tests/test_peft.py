"""Parameter-efficient families (LoRA, bottleneck adapters, visual prompts): what they add and train,
that they start from the pretrained function, merge, checkpoint lean, resume exactly, and report."""

import copy
import re
from dataclasses import replace

import pandas as pd
import pytest
import torch
from test_optim import CFG, _data, whole_and_resumed

from transfer_freezing import cli
from transfer_freezing.errors import UserError
from transfer_freezing.model import activation_cache as prefix_cache
from transfer_freezing.model import added, freezing
from transfer_freezing.model import registry as models
from transfer_freezing.study import compare, figures, stats
from transfer_freezing.train import checkpoint, diagnostics
from transfer_freezing.train import core as training

MODES = ("lora_r4", "lora_r4_mlp", "adapter_houlsby_w16", "adapter_pfeiffer_w16", "vpt_shallow_p10",
         "vpt_deep_p10")


def _built(mode: str, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(vit_demo at 32 px with ``mode`` applied, an untouched copy of its backbone)."""
    torch.manual_seed(seed)
    net = models.build("vit_demo", 10, image_size=32)
    base = copy.deepcopy(net)
    added.apply(net, freezing.plan("vit_demo", mode), "vit_demo")
    return net, base


def _nudge(net: torch.nn.Module) -> None:
    """Move every added parameter (as training would)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if freezing.added(name):
                p.add_(0.05 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("mode", MODES)
def test_only_the_added_parts_and_the_head_train(mode):
    net, _ = _built(mode)
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trained and all(freezing.added(n) or n.startswith("heads.head.") for n in trained)
    assert any(freezing.added(n) for n in trained)
    plan = freezing.plan("vit_demo", mode)
    assert all(p.requires_grad != plan.frozen(n) for n, p in net.named_parameters())


@pytest.mark.parametrize("mode", ["lora_r4", "lora_r4_mlp", "adapter_houlsby_w16", "adapter_pfeiffer_w16"])
def test_lora_and_adapters_leave_the_pretrained_function_unchanged_at_step_0(mode):
    net, base = _built(mode)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), base.eval()(x), rtol=0, atol=1e-5)  # kernels differ
        _nudge(net)
        assert not torch.allclose(net(x), base(x), atol=1e-4)  # and they do act once trained


@pytest.mark.parametrize("mode", ["vpt_shallow_p10", "vpt_deep_p10"])
def test_prompts_add_tokens_after_the_class_token(mode):
    net, base = _built(mode)
    seen = []
    net.encoder.layers[-1].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(net.eval()(x), base.eval()(x))
    assert seen == [1 + 10 + 4]  # class token, 10 prompts, 2 x 2 patches: inserted once, not per block


def test_lora_updates_only_the_query_and_value_slices():
    net, _ = _built("lora_r4")
    _nudge(net)
    attn = net.encoder.layers[0].self_attention
    delta = attn.in_proj_weight - attn.parametrizations.in_proj_weight.original
    e = delta.shape[1]
    assert delta[:e].abs().sum() > 0 and delta[2 * e:].abs().sum() > 0
    assert torch.count_nonzero(delta[e:2 * e]) == 0  # keys untouched


@pytest.mark.parametrize("mode", ["lora_r4", "lora_r4_mlp"])
def test_merging_lora_keeps_the_function_and_torchvisions_weight_names(mode):
    net, base = _built(mode)
    _nudge(net)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net.eval()(x)
        assert added.merge(net) == (12 if mode == "lora_r4" else 36)
        torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    assert set(net.state_dict()) == set(base.state_dict())


@pytest.mark.parametrize("mode", MODES)
def test_no_activation_cache_when_the_first_block_is_touched(mode):
    net, _ = _built(mode)
    assert prefix_cache.cache_depth(net, prefix_cache.stages("vit_demo")) == 0


@pytest.mark.parametrize("mode", ["lora_r4", "adapter_pfeiffer_w16", "vpt_deep_p10"])
def test_resnet_says_in_one_line_where_a_method_is_not_defined(mode):
    with pytest.raises(UserError, match=f"freeze mode {mode!r} does not apply to resnet50") as err:
        freezing.plan("resnet50", mode)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("mode", ["lora_r0", "adapter_houlsby_w0", "vpt_deep_p0", "adapter_other_w4"])
def test_out_of_range_parameters_are_unknown_modes(mode):
    with pytest.raises(UserError, match="unknown freeze mode"):
        freezing.plan("vit_b_16", mode)


def test_describe_prints_the_new_families_and_what_resnet_lacks(capsys):
    assert cli.main(["models", "--describe", "--model", "vit_b_16"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"lora_r4\s+lora\s+155,146 trainable \(\s*0\.18 %\)", out)
    assert re.search(r"adapter_houlsby_w16\s+adapter\s+616,330 trainable", out)
    assert re.search(r"vpt_deep_p10\s+vpt\s+99,850 trainable", out)
    assert cli.main(["models", "--describe", "--model", "resnet_demo"]) == 0
    assert "not defined: lora_*" in capsys.readouterr().out


@pytest.mark.slow
def test_a_lora_run_resumes_exactly_checkpoints_lean_and_loads_merged(tmp_path):
    cfg = replace(CFG, freeze="lora_r4")
    data = _data()
    whole, _ = whole_and_resumed(cfg, data, tmp_path)
    assert whole.history[-1]["train_loss"] < whole.history[0]["train_loss"]

    stored = checkpoint.read_model(tmp_path / "whole" / "model.pt")["weights"]
    assert all(freezing.added(k) or k.startswith("heads.head.") for k in stored)
    assert sum(v.numel() for v in stored.values()) == whole.trainable_params
    model = checkpoint.load_model(tmp_path / "whole" / "model.pt")
    assert not any(freezing.added(k) for k in model.state_dict())  # LoRA merged into the weights
    net = training.Plain(model)
    _, acc, pred = training.predict(net, data.test, 8, torch.device("cpu"))
    assert acc == whole.test_acc and torch.equal(pred.preds, whole.predictions["test"].preds)


@pytest.mark.parametrize("mode", ["lora_r4", "adapter_houlsby_w16", "vpt_deep_p10"])
def test_diagnostics_report_the_added_part(mode):
    initial, _ = _built(mode)
    tuned = copy.deepcopy(initial)
    _nudge(tuned)
    changes = diagnostics.weight_changes("vit_demo", initial, tuned)
    assert changes["added"] > 0 and changes["stem"] == 0 and changes["head"] == 0
    blocks = [changes[f"block_{i:02d}"] for i in range(12)]
    # LoRA's update is merged into the block's weights; adapters and prompts leave them untouched
    assert all(b > 0 for b in blocks) if mode == "lora_r4" else blocks == [0.0] * 12


# --------------------------------------------------------------------------- the frontier

# Planted means (share, accuracy): freeze_patch_0_11 is the cheapest, lora_r4 beats everything
# that trains more, so the frontier is exactly those two; bitfit and freeze_none are dominated.
PLANTED = {"freeze_none": (1.0, 60.0), "lora_r4": (0.0018, 62.0), "bitfit": (0.0013, 55.0),
           "freeze_patch_0_11": (0.0001, 40.0), "adapter_houlsby_w64": (0.028, 61.0)}


def _frontier_runs() -> pd.DataFrame:
    return pd.DataFrame([{"model": "vit_b_16", "freeze_mode": mode, "seed": s, "trainable_share": share,
                          "test_acc": acc + (s - 1), "best_val_acc": acc}
                         for mode, (share, acc) in PLANTED.items() for s in range(3)])


def test_pareto_marks_exactly_the_undominated_points():
    share, acc = zip(*PLANTED.values(), strict=True)
    front = figures.pareto(share, acc)
    assert dict(zip(PLANTED, front.tolist(), strict=True)) == {
        "freeze_none": False, "lora_r4": True, "bitfit": True, "freeze_patch_0_11": True,
        "adapter_houlsby_w64": False}
    assert figures.pareto([0.1, 0.1, float("nan")], [50.0, 50.0, 99.0]).tolist() == [True, True, False]


def test_the_depth_figure_rings_the_frontier():
    ax = figures.depth_figure(_frontier_runs()).axes[0]
    (rings,) = [c for c in ax.collections if c.get_gid() == "pareto_point"]
    assert sorted(map(tuple, rings.get_offsets().round(2).tolist())) == [(0.01, 40.0), (0.13, 55.0),
                                                                          (0.18, 62.0)]
    assert [c.get_gid() for c in ax.collections].count("pareto_front") == 1
    assert "Pareto frontier" in ax.get_title()


def test_the_budget_table_ranks_within_each_share_budget():
    summary = stats.summarize(_frontier_runs(), reference_mode="freeze_none", confidence=0.95)
    table = compare.budget_table(summary)
    ranked = {b: list(g["freeze mode"]) for b, g in table.groupby("budget", sort=False)}
    assert ranked == {"≤ 1 %": ["lora_r4", "bitfit", "freeze_patch_0_11"],
                      "≤ 10 %": ["lora_r4", "adapter_houlsby_w64", "bitfit", "freeze_patch_0_11"],
                      "all": ["lora_r4", "adapter_houlsby_w64", "freeze_none", "bitfit", "freeze_patch_0_11"]}
    top = table.iloc[0]
    assert (top["rank"], top["family"], top["Pareto"], top["trainable share"]) == (1, "lora", "yes", "0.18 %")
    assert table.loc[table["freeze mode"] == "freeze_none", "Δ test (pp) [CI]"].tolist() == ["reference"]
    assert "### Within a trainable-share budget" in compare.budget_markdown(summary)


def test_the_budget_table_ranks_each_recipe_on_its_own():
    # Two recipes of one model: each ranked and given its frontier within itself, named in a column.
    runs = pd.concat([_frontier_runs().assign(recipe="sgd"),
                      _frontier_runs().assign(recipe="adamw", test_acc=lambda d: 100 - d["test_acc"])])
    table = compare.budget_table(stats.summarize(runs, reference_mode="freeze_none", confidence=0.95))
    every = table[table["budget"] == "all"]
    assert list(every["recipe"]) == ["sgd"] * 5 + ["adamw"] * 5
    assert list(every["rank"]) == [1, 2, 3, 4, 5] * 2
    assert list(every.loc[every["recipe"] == "adamw", "freeze mode"]) == [
        "freeze_patch_0_11", "bitfit", "freeze_none", "adapter_houlsby_w64", "lora_r4"]
    # under adamw the least-training mode scores best: it alone is on that recipe's frontier
    assert list(every.loc[every["recipe"] == "adamw", "Pareto"]) == ["yes", "", "", "", ""]

"""Diagnostics: linear CKA and relative weight change against planted truths, and one run's
diagnostics.json / MLflow metrics from the train stage."""

import copy
import json
import math

import mlflow
import pandas as pd
import pytest
import torch

from transfer_freezing import config
from transfer_freezing.data.inputs import Split
from transfer_freezing.model import freezing
from transfer_freezing.model import registry as models
from transfer_freezing.study import compare
from transfer_freezing.train import core, diagnostics, tracking
from transfer_freezing.train import stage as train_stage


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- CKA

@pytest.mark.parametrize("cka", [diagnostics.cka, diagnostics.cka_biased])
def test_cka_of_a_representation_with_itself_is_one(cka):
    x = torch.randn(64, 40, generator=_gen())
    assert cka(x, x) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("cka", [diagnostics.cka, diagnostics.cka_biased])
def test_cka_is_invariant_to_orthogonal_transforms_isotropic_scaling_and_shifts(cka):
    g = _gen(1)
    x = torch.randn(100, 30, generator=g, dtype=torch.float64)
    y = x @ torch.randn(30, 20, generator=g, dtype=torch.float64) + torch.randn(
        100, 20, generator=g, dtype=torch.float64)  # related, not equal
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    value = cka(x, y)
    assert 0.2 < value < 0.95
    assert cka(x, 7.5 * (y @ q) + 3.0) == pytest.approx(value, abs=1e-9)
    assert cka(0.01 * x, y) == pytest.approx(value, abs=1e-9)


def test_cka_of_independent_features_is_near_zero():
    g = _gen(2)
    x, y = torch.randn(4000, 10, generator=g), torch.randn(4000, 10, generator=g)
    assert abs(diagnostics.cka(x, y)) < 0.01
    assert diagnostics.cka_biased(x, y) < 0.01
    # As wide as ViT-B/16's blocks on a 256-clip sample: the unbiased form stays near 0, the
    # standard (biased) one does not - why ``cka`` is the unbiased one.
    wide_x, wide_y = torch.randn(256, 768, generator=g), torch.randn(256, 768, generator=g)
    assert abs(diagnostics.cka(wide_x, wide_y)) < 0.02
    assert diagnostics.cka_biased(wide_x, wide_y) > 0.5


def test_cka_falls_with_the_share_of_noise():
    g = _gen(3)
    x = torch.randn(500, 16, generator=g)
    noise = torch.randn(500, 16, generator=g)
    values = [diagnostics.cka(x, (1 - a) * x + a * noise) for a in (0.0, 0.3, 0.6, 1.0)]
    assert values[0] == pytest.approx(1.0) and values == sorted(values, reverse=True)
    assert abs(values[-1]) < 0.05


def test_cka_refuses_mismatched_or_too_few_examples():
    with pytest.raises(ValueError, match="features"):
        diagnostics.cka(torch.zeros(5, 2), torch.zeros(6, 2))
    with pytest.raises(ValueError, match="at least 4"):
        diagnostics.cka(torch.randn(3, 2), torch.randn(3, 2))


# --------------------------------------------------------------------------- weight change

def test_relative_change_equals_a_planted_perturbation():
    g = _gen(4)
    before = {"a": torch.randn(10, 5, generator=g), "b": torch.randn(7, generator=g)}
    direction = {k: torch.randn(v.shape, generator=g) for k, v in before.items()}
    scale = 0.1 * math.sqrt(sum(float(v.square().sum()) for v in before.values())) / math.sqrt(
        sum(float(v.square().sum()) for v in direction.values()))
    after = {k: v + scale * direction[k] for k, v in before.items()}
    assert diagnostics.relative_change(before, after) == pytest.approx(0.1, rel=1e-6)  # float32 weights
    assert diagnostics.relative_change(before, before) == 0.0


def test_weight_change_of_a_part_equals_a_planted_perturbation_of_that_part_only():
    torch.manual_seed(0)
    initial = models.build("vit_demo", 10, 32)
    tuned = copy.deepcopy(initial)
    block = tuned.get_submodule("encoder.layers.encoder_layer_3")
    with torch.no_grad():
        params = list(block.parameters())
        norm = math.sqrt(sum(float(p.double().square().sum()) for p in params))
        noise = [torch.randn(p.shape, generator=_gen(9), dtype=torch.float64) for p in params]
        scale = 0.05 * norm / math.sqrt(sum(float(n.square().sum()) for n in noise))
        for p, n in zip(params, noise, strict=True):
            p.add_((scale * n).float())
    change = diagnostics.weight_changes("vit_demo", initial, tuned)
    assert change.pop("block_03") == pytest.approx(0.05, rel=1e-4)
    assert set(change.values()) == {0.0}


@pytest.mark.parametrize("name", list(models.REGISTRY))
def test_parts_cover_every_weight_once_in_forward_order(name):
    with torch.device("meta"):
        model = models.spec(name).build(224)
    keys = list(diagnostics.weights(model))
    owners = {k: [p.name for p in diagnostics.parts(name) if freezing.under(k, p.prefixes)] for k in keys}
    assert all(len(v) == 1 for v in owners.values()), {k: v for k, v in owners.items() if len(v) != 1}
    names = [p.name for p in diagnostics.parts(name)]
    assert names[0] == "stem" and names[-1] == "head"
    assert [n for n in names if n.startswith("block_")] == [f"block_{i:02d}" for i in
                                                           range(len(models.spec(name).blocks))]


def _setup(model: str, freeze: str, image_size: int = 32):
    cfg = core.RunConfig(model=model, freeze=freeze, seed=3, epochs=1, batch_size=8, lr=0.05,
                         image_size=image_size, device="cpu")
    net, opt, _, _ = core.setup(cfg, torch.device("cpu"))
    return cfg, net, opt


def _train_steps(net, opt, image_size: int, steps: int = 3) -> None:
    g = _gen(5)
    net.train()
    for _ in range(steps):
        x = torch.randn(8, 3, image_size, image_size, generator=g)
        loss = torch.nn.functional.cross_entropy(net(x), torch.randint(0, 10, (8,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize(("model", "freeze", "frozen"), [
    ("vit_demo", "freeze_patch_0_5", ["stem", *(f"block_{i:02d}" for i in range(6))]),
    ("resnet_demo", "freeze_0_1", ["stem", "block_00"]),
])
def test_weight_change_is_zero_untrained_and_for_frozen_parts_only(model, freeze, frozen):
    cfg, net, opt = _setup(model, freeze)
    initial = copy.deepcopy(net)
    assert set(diagnostics.weight_changes(model, initial, net).values()) == {0.0}
    _train_steps(net, opt, cfg.image_size)
    change = diagnostics.weight_changes(model, initial, net)
    assert [k for k, v in change.items() if v == 0.0] == frozen
    assert all(v > 0 for k, v in change.items() if k not in frozen)


# --------------------------------------------------------------------------- block features

@pytest.mark.parametrize(("model", "width"), [("vit_demo", 192), ("resnet_demo", 512)])
def test_block_features_are_one_row_per_clip_per_block(model, width):
    _, net, _ = _setup(model, "freeze_none")
    images = torch.rand(10, 32, 32, generator=_gen(6))
    feats = diagnostics.block_features(model, net, images, 4, torch.device("cpu"))
    assert list(feats) == [f"block_{i:02d}" for i in range(len(models.spec(model).blocks))]
    assert all(f.shape[0] == 10 for f in feats.values())
    assert feats["block_00"].shape[1] == (192 if model == "vit_demo" else 64)
    assert feats[list(feats)[-1]].shape[1] == width
    # Hooks removed; the model's own forward is unchanged by them.
    assert not any(m._forward_hooks for m in net.modules())


def test_the_clip_sample_is_fixed_and_independent_of_order_of_calls():
    split = Split(torch.arange(50).view(50, 1, 1).float(), torch.zeros(50, dtype=torch.long),
                  [f"c{i}" for i in range(50)])
    images, ids = diagnostics.sample(split, 8)
    assert diagnostics.sample(split, 8)[1] == ids and len(set(ids)) == 8
    assert ids == sorted(ids, key=lambda c: int(c[1:]))
    assert images.flatten().tolist() == [float(c[1:]) for c in ids]


def _diagnose(freeze: str) -> dict:
    cfg, net, opt = _setup("vit_demo", freeze)
    initial = copy.deepcopy(net)
    _train_steps(net, opt, cfg.image_size)
    test = Split(torch.rand(12, 32, 32, generator=_gen(7)), torch.zeros(12, dtype=torch.long),
                 [str(i) for i in range(12)])
    return diagnostics.diagnose({"model": "vit_demo", "freeze": freeze, "seed": 3, "fold": 0},
                                initial, net, test, 256, torch.device("cpu"))


def test_diagnose_frozen_blocks_have_no_change_and_cka_one_when_the_class_token_is_frozen_too():
    diag = _diagnose("freeze_patch_0_5_cls")
    assert diag["clips"] == 12 and diag["frozen_blocks"] == 6
    for i in range(12):
        entry = diag["parts"][f"block_{i:02d}"]
        if i < 6:
            assert entry["weight_change"] == 0.0 and entry["cka"] == pytest.approx(1.0, abs=1e-9)
        else:
            assert entry["weight_change"] > 0 and entry["cka"] < 1.0
    metrics = diagnostics.metrics(diag)
    assert "weight_change.block_03" in metrics and "cka.block_11" in metrics and "cka.head" not in metrics


def test_a_trained_class_token_changes_the_readout_of_frozen_blocks():
    # freeze_patch_0_5 trains the class token, an input of block 0: the frozen blocks' weights stay,
    # their class-token output does not (the token acts as a prompt).
    diag = _diagnose("freeze_patch_0_5")
    frozen = [diag["parts"][f"block_{i:02d}"] for i in range(6)]
    assert all(e["weight_change"] == 0.0 for e in frozen) and diag["parts"]["tail"]["weight_change"] > 0
    assert all(e["cka"] < 0.999 for e in frozen)


# --------------------------------------------------------------------------- one run of the stage

@pytest.mark.slow
def test_a_demo_run_writes_diagnostics_json_and_mlflow_metrics(tiny):
    p = config.load("params.yaml")
    train_stage.train(p, "vit_demo", "freeze_patch_0_5_cls", 1)
    out = train_stage.run_dir(p["train"]["out"], "vit_demo", "freeze_patch_0_5_cls", 1, 0, "fixed")
    diag = json.loads((out / diagnostics.FILE).read_text())
    blocks = [f"block_{i:02d}" for i in range(12)]
    assert set(diag["parts"]) == {"stem", *blocks, "tail", "head"}
    assert all(diag["parts"][b]["weight_change"] == 0.0 for b in ["stem", *blocks[:6]])
    assert all(diag["parts"][b]["weight_change"] > 0 for b in [*blocks[6:], "tail", "head"])
    assert all(diag["parts"][b]["cka"] == pytest.approx(1.0, abs=1e-6) for b in blocks[:6])
    assert diag["clips"] == 20  # the tiny corpus's whole test fold (60 clips, 3 folds)
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    mlflow.set_tracking_uri("sqlite:///mlruns/mlflow.db")
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    logged = run.data.metrics[tracking.metric_name("weight_change.block_11")]  # diagnostics/weight_change/...
    assert logged == pytest.approx(diag["parts"]["block_11"]["weight_change"])
    assert run.data.metrics["diagnostics/cka/block_00"] == pytest.approx(1.0, abs=1e-6)
    assert {a.path for a in client.list_artifacts(run_id, "diagnostics")} == {
        "diagnostics/diagnostics.json", "diagnostics/diagnostics.png"}


# --------------------------------------------------------------------------- the compare summary

def _compared_runs() -> pd.DataFrame:
    rows = []
    for mode, moved in (("freeze_none", 0.02), ("freeze_patch_0_0", 0.01)):
        for seed in (1, 2):
            row = {"model": "vit_demo", "recipe": "fixed", "freeze_mode": mode, "seed": seed,
                   "test_acc": 50.0, "trainable_share": 0.5}
            row |= {"weight_change.stem": 0.0 if mode != "freeze_none" else moved * seed,
                    "weight_change.block_00": 0.0 if mode != "freeze_none" else moved * seed,
                    "weight_change.block_01": moved * seed, "weight_change.head": 1.0,
                    "cka.block_00": 1.0 if mode != "freeze_none" else 0.9, "cka.block_01": 0.8 + 0.1 * seed}
            rows.append(row)
    rows.append({"model": "vit_demo", "recipe": "fixed", "freeze_mode": "freeze_none", "seed": 3,
                 "test_acc": 50.0, "trainable_share": 0.5})  # an older run: no diagnostics
    return pd.DataFrame(rows)


def test_compare_summarises_diagnostics_per_mode_and_part_in_forward_order():
    table = compare.diagnostics_summary(_compared_runs())
    none = table[table["freeze_mode"] == "freeze_none"].set_index("part")
    assert list(none.index) == ["stem", "block_00", "block_01", "head"]
    assert none.loc["block_01", "weight_change"] == pytest.approx(0.03)  # mean of 0.02 and 0.04
    assert none.loc["block_01", "cka"] == pytest.approx(0.95) and set(none["n_runs"]) == {2}
    assert pd.isna(none.loc["head", "cka"])
    frozen = table[table["freeze_mode"] == "freeze_patch_0_0"].set_index("part")
    assert frozen.loc["block_00", "weight_change"] == 0.0 and frozen.loc["block_00", "cka"] == 1.0


def test_compare_writes_the_diagnostics_section_and_says_when_there_are_none(tmp_path):
    section = compare._write_diagnostics(_compared_runs(), tmp_path)
    assert "vit_demo: relative weight change" in section and "1 run(s) logged no diagnostics" in section
    assert len(pd.read_csv(tmp_path / compare.NAMES["diagnostics"])) == 8
    assert (tmp_path / compare.NAMES["diagnostics_png"]).stat().st_size > 10_000
    old = _compared_runs().filter(regex=r"^(?!weight_change\.|cka\.)")
    assert "No diagnostics" in compare._write_diagnostics(old, tmp_path)
    assert pd.read_csv(tmp_path / compare.NAMES["diagnostics"]).empty
    assert (tmp_path / compare.NAMES["diagnostics_png"]).is_file()

"""The frozen-prefix activation cache: decided from the frozen model, same results as the plain path."""

import contextlib
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest
import torch

from transfer_freezing import config
from transfer_freezing.data.inputs import Split
from transfer_freezing.model import activation_cache as prefix_cache
from transfer_freezing.model import freezing
from transfer_freezing.model import registry as models
from transfer_freezing.train import core as training
from transfer_freezing.train import stage as train_stage

from conftest import REPO

# (model, mode, frozen_bn) -> stages whose output is cached (0 = no cache). Every ViT mode that
# leaves the class token trainable mixes it into all tokens in block 0: only the head-only probe.
DEPTHS = [
    ("vit_demo", "freeze_none", "eval", 0),
    ("vit_demo", "freeze_patch", "eval", 0),
    ("vit_demo", "freeze_patch_0_5", "eval", 0),
    ("vit_demo", "freeze_patch_0_11", "eval", 15),  # patch, tokens, 12 blocks, pool
    ("resnet_demo", "freeze_0", "eval", 0),  # the stem alone is not worth its memory
    ("resnet_demo", "freeze_0_1_2", "eval", 3),  # stem, layer1, layer2
    ("resnet_demo", "freeze_0_1_2", "train", 0),  # BatchNorm in train mode uses batch statistics
    ("resnet_demo", "freeze_0_1_2_3_4", "eval", 6),  # ... layer4, pool
]


def _frozen(name: str, mode: str, frozen_bn: str = "eval") -> torch.nn.Module:
    net = models.build(name, 10, image_size=32)
    freezing.freeze(net, freezing.prefixes(name, mode), freeze_bn_stats=frozen_bn == "eval")
    return net


@pytest.mark.parametrize("name", ["vit_demo", "resnet_demo"])
def test_stages_in_order_are_the_model_forward(name):
    net = models.build(name, 10, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(prefix_cache.Span(net, prefix_cache.stages(name))(x), net(x))


@pytest.mark.parametrize("name", ["vit_demo", "resnet_demo"])
def test_every_parameter_belongs_to_exactly_one_stage(name):
    net = models.build(name, 10, image_size=32)
    parts = prefix_cache.stages(name)
    for param_name, _ in net.named_parameters():
        assert sum(freezing.under(param_name, s.owns) for s in parts) == 1, param_name


@pytest.mark.parametrize(("name", "mode", "frozen_bn", "depth"), DEPTHS)
def test_cache_depth_follows_what_is_frozen(name, mode, frozen_bn, depth):
    net = _frozen(name, mode, frozen_bn)
    assert prefix_cache.cache_depth(net, prefix_cache.stages(name)) == depth


def test_patch_embedding_is_constant_but_not_cached_in_partial_vit_modes():
    net = _frozen("vit_demo", "freeze_patch_0_5")
    parts = prefix_cache.stages("vit_demo")
    assert prefix_cache.constant_depth(net, parts) == 1 and net.class_token.requires_grad


@pytest.mark.parametrize(("name", "mode"),
                         [("vit_demo", "freeze_patch_0_11"), ("resnet_demo", "freeze_0_1_2")])
def test_cached_path_gives_the_plain_path_results(tiny, capsys, name, mode):
    p = config.load("params.yaml")
    data, meta = train_stage.Workspace.from_params(p).load_data(p["train"]["batch_size"])
    cfg = train_stage.run_config(p, name, mode, 1, 0.01, len(meta["classes"]))
    plain = training.fit(replace(cfg, activation_cache=False), data, tiny / "plain")
    assert "activation cache" not in capsys.readouterr().out
    cached = training.fit(cfg, data, tiny / "cached")
    assert "activation cache: stages up to" in capsys.readouterr().out
    for key in ("test_acc", "best_val_acc", "best_epoch", "confusion"):
        assert getattr(cached, key) == getattr(plain, key), key
    assert [r["train_acc"] for r in cached.history] == [r["train_acc"] for r in plain.history]
    got = [cached.test_loss] + [r[k] for r in cached.history for k in ("train_loss", "val_loss")]
    want = [plain.test_loss] + [r[k] for r in plain.history for k in ("train_loss", "val_loss")]
    assert got == pytest.approx(want, rel=1e-5)  # float round-off only


def test_cache_on_disk_is_shared_and_keyed_by_frozen_weights(tmp_path):
    split = Split(torch.rand(6, 32, 32).half(), torch.arange(6) % 2, [str(i) for i in range(6)])
    args = ({"train": split}, 4, torch.device("cpu"), contextlib.nullcontext, tmp_path, {})
    net = _frozen("resnet_demo", "freeze_0_1")
    prefix_cache.clear_memory()
    _, first = prefix_cache.prepare(net, "resnet_demo", *args)
    [written] = tmp_path.glob("*.pt")
    stamp = written.stat().st_mtime_ns
    twin = _frozen("resnet_demo", "freeze_0_1")
    twin.load_state_dict(net.state_dict())  # same frozen weights (e.g. ImageNet), another run
    prefix_cache.clear_memory()
    _, again = prefix_cache.prepare(twin, "resnet_demo", *args)
    assert torch.equal(again["train"].images, first["train"].images)
    assert written.stat().st_mtime_ns == stamp  # read back, not recomputed and rewritten
    prefix_cache.prepare(_frozen("resnet_demo", "freeze_0_1"), "resnet_demo", *args)  # other init
    assert len(list(tmp_path.glob("*.pt"))) == 2


BLOCKED = ["mlflow", "soundfile", "torchaudio", "pandas", "dvc", "optuna", "yaml", "scipy",
           "sklearn", "matplotlib", "psycopg", "librosa"]


def test_training_core_runs_with_torch_and_torchvision_only(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        for name in {BLOCKED + ["tqdm"]!r}:
            sys.modules[name] = None  # import name -> ImportError
        import torch
        from transfer_freezing.train import core as training
        from transfer_freezing.data.inputs import Split
        def split(n):
            return Split(torch.rand(n, 32, 32).half(), torch.arange(n) % 3, [str(i) for i in range(n)])
        cfg = training.RunConfig("resnet_demo", "freeze_0_1_2", 1, epochs=1, batch_size=8, lr=0.01,
                                 image_size=32, num_classes=3, device="cpu")
        data = training.Data(split(16), split(8), split(8))
        result = training.fit(cfg, data, __import__("pathlib").Path(sys.argv[1]))
        loaded = [m for m in {BLOCKED!r} if m in sys.modules and sys.modules[m] is not None]
        print("ok", result.test_acc, loaded)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout and proc.stdout.strip().endswith("[]")

"""The benchmarks run end to end, count what they divide by, and train what they claim to."""

import json
import os
import sys

import pytest
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import train_throughput  # noqa: E402


def test_cpu_attention_matmuls_are_counted():
    b, h, s, d = 2, 3, 5, 8
    q, k, v = (torch.randn(b, h, s, d, requires_grad=True) for _ in range(3))
    with FlopCounterMode(display=False) as counter:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    # torch's formulas, as for the CUDA kernels: 2 matmuls forward; backward 4 plus the recomputed scores
    assert counter.get_total_flops() == 7 * 2 * b * h * s * s * d


@pytest.mark.slow
def test_train_throughput_reports_ratios_and_mfu(tmp_path):
    result = train_throughput.main([
        "--model", "vit_demo", "--image-size", "32", "--batch-size", "4", "--steps", "1", "--rounds", "1",
        "--modes", "freeze_none", "freeze_patch_0_11", "--no-stem-probe", "--mfu-model", "vit_demo",
        "--mfu-image-size", "32", "--mfu-batch-size", "4", "--mfu-steps", "1", "--out", str(tmp_path)])
    [written] = tmp_path.glob("train_throughput-vit_demo-cpu-*.json")
    assert json.loads(written.read_text())["rows"][1]["cached_after"] == "pool"
    assert all(r["train_ratio"] > 0 for r in result["rows"])
    m = result["mfu"]
    assert len(m["peak_gflops_samples"]) == 3 and m["peak_gflops"] == max(m["peak_gflops_samples"])
    assert m["opt_executed_gflop_per_image"] < m["gflop_per_image"]  # the class-token-only last block
    assert 0 < m["opt_hfu"] < m["opt_mfu"]


def test_gpu_grid_scratch_params_are_valid_paper_profiles():
    import gpu_grid

    from transfer_freezing import config

    for scale in gpu_grid.SCALES:
        p = gpu_grid.scratch_params(scale, [1, 8], "cpu", 0)
        checked = config.validate(dict(config.flat(p)), source=f"gpu_grid {scale}")
        assert checked["data"]["source"] == "synthetic" and checked["train"]["weights"] == "none"
        assert checked["grid"]["seeds"] == [1, 8] and checked["tracking"]["uri"].startswith("sqlite:///")
        assert config.pairs(checked, "tuned") == []  # compare waits for no tuned-lr cells
    paper = gpu_grid.scratch_params("paper", gpu_grid.PAPER_SEEDS, "cuda", 0)
    assert paper["features"]["image_size"] == 224 and paper["train"]["epochs"] == 20
    assert len(gpu_grid.cells(paper)) == 50


@pytest.mark.slow
def test_gpu_grid_smoke_runs_a_route_through_compare(monkeypatch):
    import gpu_grid

    saved = {}
    monkeypatch.setattr(gpu_grid, "save", lambda name, result: saved.update({name: result}))
    result = gpu_grid.main(["--scale", "smoke", "--routes", "one-process", "--seeds", "1", "--device", "cpu",
                            "--workers", "1"])
    [row] = result["routes"]
    assert row["route"] == "one-process" and row["cells"] == 3  # 3 modes x 1 seed, then the table
    assert 0 < row["fit_seconds_sum"] < row["wall_seconds"] and row["compare_seconds"] > 0
    assert saved == {"gpu_grid-smoke": result}


def test_disk_footprint_counts_a_hard_linked_file_once_and_a_copy_twice(tmp_path):
    import disk_footprint

    cache, work = tmp_path / "cache", tmp_path / "models"
    cache.mkdir()
    work.mkdir()
    (cache / "a").write_bytes(b"x" * 1000)
    os.link(cache / "a", work / "a")  # DVC's hardlink cache: one inode, two names
    (work / "b").write_bytes(b"y" * 300)
    (work / "c").symlink_to(work / "b")  # a symlink is not a file of its own
    assert disk_footprint.footprint([work, cache]) == {"apparent_bytes": 2300, "unique_bytes": 1300,
                                                       "files": 2}
    (work / "a").unlink()
    (work / "a").write_bytes(b"x" * 1000)  # DVC's copy: two inodes
    assert disk_footprint.footprint([work, cache])["unique_bytes"] == 2300
    assert disk_footprint.footprint([tmp_path / "absent"]) == {"apparent_bytes": 0, "unique_bytes": 0,
                                                               "files": 0}


def test_disk_footprint_params_are_the_paper_grid_with_sizes_unchanged():
    import disk_footprint

    from transfer_freezing import config

    p = config.load(REPO / "profiles" / "paper.yaml")
    flat = {**config.flat(p), **disk_footprint.CHANGES}
    checked = config.validate(flat, source="disk_footprint")
    assert checked["grid"]["models"] == ["vit_b_16"] and checked["features"]["image_size"] == 224
    assert len(checked["grid"]["freeze_modes"]) == 5 and checked["grid"]["tuned_models"] == []


def test_disk_footprint_scales_kept_and_dropped_cells_by_the_policy():
    import disk_footprint
    import pytest

    cell = {"mode": "freeze_none", "other_bytes": 10}
    rows = [{**cell, "seed": 1, "weights_kept": True, "model_pt_bytes": 1000},
            {**cell, "seed": 8, "weights_kept": False, "model_pt_bytes": 50}]
    [m] = disk_footprint.scale(rows, "first_seed").values()
    assert (m["kept_cell_bytes"], m["dropped_cell_bytes"], m["ten_seed_bytes"]) == (1010, 60, 1010 + 9 * 60)
    assert disk_footprint.scale(rows[:1], "all")["freeze_none"]["ten_seed_bytes"] == 10 * 1010
    with pytest.raises(SystemExit, match="keeps and one that drops"):
        disk_footprint.scale(rows[:1], "first_seed")


def _seeded_nets(mode: str, seeds: list[int]):
    import ensemble

    from transfer_freezing.train import core as training

    data = training.Data(train_throughput.synthetic(24, 32, 1), train_throughput.synthetic(8, 32, 2),
                         train_throughput.synthetic(8, 32, 3))
    cfgs = [training.RunConfig(model="vit_demo", freeze=mode, seed=s, epochs=1, batch_size=8, lr=0.05,
                               image_size=32, device="cpu") for s in seeds]
    cpu = torch.device("cpu")
    built = [training.setup(c, cpu) for c in cfgs]
    ensemble.share_frozen([m for m, *_ in built])
    prepared = [training.prepare(c, m, data, cpu) for c, (m, *_) in zip(cfgs, built, strict=True)]
    return [net for net, _ in prepared], [opt for _, opt, *_ in built], prepared[0][1]


@pytest.mark.slow
def test_ensemble_steps_every_seed_as_its_own_run_would():
    import ensemble

    for mode in ("freeze_none", "freeze_patch_0_5", "freeze_patch_0_11"):
        nets, opts, data = _seeded_nets(mode, [1, 2, 3])
        trained = [k for k, p in nets[0].named_parameters() if p.requires_grad]
        frozen = [k for k, p in nets[0].named_parameters() if not p.requires_grad]
        assert all(torch.equal(dict(n.named_parameters())[k], dict(nets[0].named_parameters())[k])
                   for n in nets for k in frozen)
        assert any(not torch.equal(dict(nets[1].named_parameters())[k], dict(nets[0].named_parameters())[k])
                   for k in trained)  # the seeds differ in what they train
        ens = ensemble.Ensemble(nets, lr=0.05, momentum=0.9)
        ens.train()
        rng = torch.Generator().manual_seed(5)
        for _ in range(3):
            idx = torch.stack([torch.randperm(len(data.train), generator=rng)[:8] for _ in nets])
            xs, ys = data.train.images[idx], data.train.labels[idx]
            losses = ens.step(xs, ys)
            for k, (net, opt) in enumerate(zip(nets, opts, strict=True)):
                net.train()
                loss = F.cross_entropy(net(xs[k]), ys[k])
                assert abs(loss.item() - losses[k].item()) < 1e-5
                opt.zero_grad()
                loss.backward()
                opt.step()
        for k, net in enumerate(nets):
            alone = dict(net.named_parameters())
            assert max((ens.weights(k)[n] - alone[n]).abs().max().item() for n in trained) < 1e-5, mode


def test_ensemble_refuses_batchnorm():
    import ensemble
    import pytest

    with pytest.raises(ValueError, match="BatchNorm"):
        ensemble.Ensemble([torch.nn.Sequential(torch.nn.BatchNorm1d(3))], lr=0.1)


@pytest.mark.slow
def test_concurrent_seeds_prints_processes_and_ensemble_rows(tmp_path):
    import concurrent_seeds

    result = concurrent_seeds.main(["--model", "vit_demo", "--mode", "freeze_patch_0_5", "--image-size", "32",
                                    "--batch-size", "4", "--steps", "2", "--epochs", "1", "--procs", "1",
                                    "--ensemble", "2", "--device", "cpu", "--out", str(tmp_path)])
    routes = [(r["route"], r["seeds"]) for r in result["rows"]]
    assert routes == [("processes", 1), ("ensemble", 2)]
    assert all(r["aggregate_ips"] > 0 for r in result["rows"])
    assert result["rows"][0]["ratio"] == 1.0

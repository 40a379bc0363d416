"""params.yaml is read and validated in one place: bad values fail before any work, in one line."""

from pathlib import Path

import pytest
import yaml

from transfer_freezing import config
from transfer_freezing.errors import UserError

from conftest import REPO, tfreeze, write_params


def test_committed_params_is_the_demo_profile():
    assert (REPO / "params.yaml").read_text() == (REPO / "profiles" / "demo.yaml").read_text()


@pytest.mark.parametrize("profile", ["demo", "paper"])
def test_profiles_validate(profile):
    p = config.load(REPO / "profiles" / f"{profile}.yaml")
    assert set(p) == set(config.sections())


def test_paper_profile_has_the_study_settings():
    p = config.load(REPO / "profiles" / "paper.yaml")
    assert p["train"]["models"] == ["vit_b_16"]
    assert p["train"]["seeds"] == [1, 8, 16, 24, 32, 40, 48, 56, 64, 72]
    assert (p["train"]["epochs"], p["train"]["batch_size"], p["train"]["lr"]) == (20, 32, 1e-3)
    assert p["train"]["weights"] == "imagenet" and p["features"]["image_size"] == 224


def test_set_overrides_parse_values_as_yaml(tmp_path):
    path = write_params(tmp_path)
    p = config.load(path, ["train.epochs=7", "train.seeds=[4, 5]", "train.lr=0.05"])
    assert p["train"]["epochs"] == 7 and p["train"]["seeds"] == [4, 5] and p["train"]["lr"] == 0.05


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
        ("train.epochs=0", "train.epochs = 0 is not allowed; expected an integer >= 1"),
        ("train.lr=0", "train.lr = 0.0 is not allowed"),
        ("train.lr=-1e-3", "train.lr = -0.001 is not allowed"),
        ("train.seeds=[]", "train.seeds = [] is not allowed; expected a non-empty list"),
        ("split.train=1.5", "split.train = 1.5 is not allowed; expected a number in (0, 1]"),
        ("split.val=0", "split.val = 0.0 is not allowed"),
        ("split.scheme=random",
         "split.scheme = 'random' is not allowed; expected one of stratified, filtered, kfold"),
        ("split.scheme=filtered", "split.scheme = 'filtered' needs data.source = 'gtzan'"),
        ("train.models=[vit_z]", "unknown model 'vit_z'; valid: vit_b_16, vit_demo, resnet50"),
        ("train.freeze_modes=[freeze_all]", "unknown freeze mode 'freeze_all' for vit_demo; valid:"),
        ("data.source=gtzan", "data.source = 'gtzan' needs data.path"),
        ("sweep.lr_low=1.0", "sweep.lr_low = 1 must be below sweep.lr_high"),
        ("sweep.n_trials=0", "sweep.n_trials = 0 is not allowed"),
    ],
)
def test_bad_values_give_one_line(tmp_path, override, message):
    path = write_params(tmp_path)
    with pytest.raises(UserError) as err:
        config.load(path, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_in_file_is_rejected(tmp_path):
    path = write_params(tmp_path)
    tree = yaml.safe_load(path.read_text())
    tree["train"]["learning_rate"] = 0.1
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(UserError, match="unknown key 'train.learning_rate'"):
        config.load(path)


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path: Path):
    write_params(tmp_path)
    proc = tfreeze("train", "--set", "train.epochs=0", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("tfreeze train: error: ")


def test_missing_params_file(tmp_path):
    proc = tfreeze("data", "--params", "nope.yaml", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "params file not found: nope.yaml" in proc.stderr

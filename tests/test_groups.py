"""Grouped splits (``split.groups``): a group (e.g. an artist) never spans two parts of a cell."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from torchaudio.datasets import gtzan

from transfer_freezing import config
from transfer_freezing.data import corpus, features, splits
from transfer_freezing.errors import UserError

from conftest import write_params

GENRES = ("blues", "classical", "country", "disco", "jazz", "metal")


def grouped_corpus(per_genre: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A manifest and its groups: each genre's clips belong to artists of 1-6 clips (GTZAN-like:
    one artist, one genre), group sizes drawn at random."""
    rng = np.random.default_rng(seed)
    clips, groups = [], []
    for genre in GENRES:
        i = artist = 0
        while i < per_genre:
            size = min(int(rng.integers(1, 7)), per_genre - i)
            for _ in range(size):
                clips.append({"clip_id": f"{genre}.{i:05d}", "genre": genre, "status": "ok"})
                groups.append({"clip_id": f"{genre}.{i:05d}", "group": f"{genre}-artist{artist}"})
                i += 1
            artist += 1
    return pd.DataFrame(clips), pd.DataFrame(groups)


@pytest.fixture
def grouped(tmp_path):
    manifest, groups = grouped_corpus()
    path = tmp_path / "groups.csv"
    groups.to_csv(path, index=False)
    return manifest, groups, path


def test_kfold_keeps_every_group_in_one_fold_of_every_repeat(grouped):
    manifest, groups, path = grouped
    s = splits.SplitConfig("kfold", folds=5, repeats=3, seed=1, groups=str(path))

    table, notes = splits.make_split(manifest, s)

    assert notes == []
    assert list(table.columns) == ["repeat", "fold", "clip_id", "genre", "group"]
    assert table.groupby(["repeat", "group"])["fold"].nunique().eq(1).all()
    for cell in range(15):  # and so no group is in two of a cell's train / val / test
        role = splits.cell_roles(table, cell, 5)
        by_group = pd.DataFrame({"role": role, "group": groups.set_index("clip_id")["group"]})
        assert by_group.groupby("group")["role"].nunique().eq(1).all()
    # every clip is a test clip once per repeat, and the repeats re-partition
    assert table.groupby(["repeat", "clip_id"]).size().eq(1).all() and len(table) == 3 * len(manifest)
    folds = table.pivot(index="clip_id", columns="repeat", values="fold")
    assert not folds[0].equals(folds[1])


def test_grouped_kfold_still_stratifies_roughly(grouped):
    manifest, groups, path = grouped
    s = splits.SplitConfig("kfold", folds=5, repeats=3, seed=1, groups=str(path))

    table, _ = splits.make_split(manifest, s)

    counts = table.groupby(["repeat", "fold", "genre"]).size().unstack(fill_value=0)
    largest_group = groups["group"].value_counts().max()  # 6: how far one fold can be off
    assert (counts.sub(40 / 5).abs() <= largest_group).all().all()
    shares = counts.div(counts.sum(axis=1), axis=0)
    assert (shares.sub(1 / len(GENRES)).abs() < 0.1).all().all()  # every fold holds every genre


def test_grouped_stratified_split_keeps_groups_whole_at_about_80_10_10(tmp_path):
    manifest, groups = grouped_corpus(per_genre=100)  # GTZAN's size: 10 test clips per genre
    path = tmp_path / "groups.csv"
    groups.to_csv(path, index=False)
    s = splits.SplitConfig("stratified", seed=3, groups=str(path))

    table, _ = splits.make_split(manifest, s)

    assert list(table.columns) == ["clip_id", "genre", "split", "group"]
    assert table.groupby("group")["split"].nunique().eq(1).all()
    shares = table["split"].value_counts(normalize=True)
    assert abs(shares["test"] - 0.1) < 0.03 and abs(shares["val"] - 0.1) < 0.03
    counts = table.groupby(["split", "genre"]).size().unstack(fill_value=0)
    assert (counts.loc[["val", "test"]].sub(10).abs() <= groups["group"].value_counts().max()).all().all()
    again, _ = splits.make_split(manifest, s)
    pd.testing.assert_frame_equal(table, again)  # fixed by split.seed


def test_ungrouped_splits_are_unchanged_by_the_feature(grouped):
    manifest, _, _ = grouped
    s = splits.SplitConfig("kfold", folds=5, repeats=2, seed=1)

    table, _ = splits.make_split(manifest, s)

    assert list(table.columns) == ["repeat", "fold", "clip_id", "genre"]


def test_clips_without_a_group_fail_with_one_line_naming_them(grouped, tmp_path):
    manifest, groups, _ = grouped
    path = tmp_path / "partial.csv"
    groups.iloc[7:].to_csv(path, index=False)

    with pytest.raises(UserError) as err:
        splits.make_split(manifest, splits.SplitConfig("kfold", groups=str(path)))

    assert str(err.value) == (f"split.groups = {path}: 7 of {len(manifest)} clips have no group: "
                              "blues.00000, blues.00001, blues.00002, blues.00003, blues.00004, ...; "
                              "add a clip_id,group row for each")


def test_a_group_file_naming_unknown_clips_says_so(grouped, tmp_path):
    manifest, groups, _ = grouped
    path = tmp_path / "more.csv"
    extra = pd.DataFrame({"clip_id": ["jazz.00054", "pop.00001"], "group": ["x", "y"]})
    pd.concat([groups, extra]).to_csv(path, index=False)

    _, notes = splits.make_split(manifest, splits.SplitConfig("kfold", groups=str(path)))

    assert notes == [f"split.groups = {path} names 2 clip(s) not in the corpus (ignored): "
                     "jazz.00054, pop.00001"]


@pytest.mark.parametrize(("text", "says"), [
    ("clip,artist\na,b\n", "columns ['clip', 'artist']; expected exactly clip_id,group"),
    ("clip_id,group\nblues.00000,a\nblues.00000,b\n", "1 clip(s) listed more than once: blues.00000"),
    ("clip_id,group\nblues.00000,\n", "1 row(s) with an empty group: blues.00000"),
])
def test_a_malformed_group_file_fails_with_one_line(tmp_path, text, says):
    path = tmp_path / "g.csv"
    path.write_text(text)

    with pytest.raises(UserError, match=re.escape(f"split.groups = {path}: {says}")):
        splits.read_groups(path)


def test_too_few_groups_for_the_folds_is_one_line(tmp_path):
    manifest = pd.DataFrame({"clip_id": [f"blues.{i:05d}" for i in range(9)], "genre": "blues",
                             "status": "ok"})
    path = tmp_path / "g.csv"
    manifest.assign(group=[f"a{i % 2}" for i in range(9)])[["clip_id", "group"]].to_csv(path, index=False)

    with pytest.raises(UserError, match="has 2 groups; split.folds = 3 needs >= 3"):
        splits.make_split(manifest, splits.SplitConfig("kfold", folds=3, groups=str(path)))


def test_filtered_lists_are_checked_against_the_groups(tmp_path):
    ids = gtzan.filtered_train + gtzan.filtered_valid + gtzan.filtered_test
    manifest = pd.DataFrame({"clip_id": ids, "genre": [i.split(".")[0] for i in ids], "status": "ok"})
    per_clip = tmp_path / "per_clip.csv"
    pd.DataFrame({"clip_id": ids, "group": ids}).to_csv(per_clip, index=False)
    crossing = tmp_path / "crossing.csv"
    joined = {gtzan.filtered_train[0]: "same", gtzan.filtered_test[0]: "same"}
    pd.DataFrame({"clip_id": ids, "group": [joined.get(i, i) for i in ids]}).to_csv(crossing, index=False)

    table, _ = splits.make_split(manifest, splits.SplitConfig("filtered", groups=str(per_clip)))
    with pytest.raises(UserError, match=r"1 group\(s\) span two of train/val/test .*: same; use"):
        splits.make_split(manifest, splits.SplitConfig("filtered", groups=str(crossing)))

    assert table["split"].value_counts().to_dict() == {"train": 443, "test": 290, "val": 197}
    assert "group" in table


def test_features_stage_writes_the_group_column_and_hashes_the_file(tmp_path, monkeypatch):
    write_params(tmp_path, **{"split.scheme": "kfold", "split.folds": 3, "split.groups": "groups.csv"})
    monkeypatch.chdir(tmp_path)
    ungrouped = config.load("params.yaml", ["split.groups=null"])
    manifest = corpus.materialise(ungrouped)
    ids = manifest["clip_id"]
    # three artists of two clips per genre: blues.00000 and blues.00001 are "blues-a0", ...
    groups = pd.DataFrame({"clip_id": ids, "group": [f"{c.split('.')[0]}-a{int(c.split('.')[1]) // 2}"
                                                      for c in ids]})
    groups.to_csv("groups.csv", index=False)
    p = config.load("params.yaml")

    meta = features.build(p)

    split = pd.read_csv("data/split.csv")
    assert list(split.columns) == ["repeat", "fold", "clip_id", "genre", "group"]
    assert split.groupby("group")["fold"].nunique().eq(1).all()
    assert meta["groups"]["path"] == "groups.csv" and meta["groups"]["n"] == 30
    print("\n" + split.head(8).to_csv(index=False))
    assert features.params_hash(p) != features.params_hash(ungrouped)
    store = features.Store.from_params(p)
    assert len(store.load_cell(0)["test"]) == 20

    groups.assign(group="one").to_csv("groups.csv", index=False)  # edited in place: DVC cannot see it
    with pytest.raises(UserError, match=r"groups.csv \(split.groups\) changed since the features .* "
                                        "dvc repro -f features"):
        features.Store.from_params(config.load("params.yaml")).load_cell(0)
    assert json.loads((tmp_path / "data/features/meta.json").read_text())["groups"]["sha256_16"]

"""Split schemes (a registry): stratified train/val/test, GTZAN's fault-filtered lists, repeated
K-fold; each optionally grouped (``split.groups``: a group never spans two parts)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torchaudio.datasets import gtzan

from ..config import Params
from ..errors import UserError

SPLITS = ("train", "val", "test")
GROUP_COLUMNS = ("clip_id", "group")  # the split.groups CSV
SHOWN = 5  # clip ids named in a message before "..."


@dataclass(frozen=True)
class SplitConfig:
    """How clips are assigned to train / val / test (the ``split`` section)."""

    scheme: str = "stratified"
    train: float = 0.8
    val: float = 0.1
    test: float = 0.1
    seed: int = 1
    folds: int = 5
    repeats: int = 1
    groups: str | None = None  # CSV of clip_id,group: clips of one group stay in one part

    @classmethod
    def from_params(cls, p: Params) -> SplitConfig:
        s = p["split"]
        return cls(s["scheme"], s["train"], s["val"], s["test"], s["seed"], s["folds"], s["repeats"],
                   s["groups"])

    @property
    def cells(self) -> int:
        """How many train/val/test assignments the scheme defines (fold x repeat; 1 for a single split)."""
        return self.folds * self.repeats if self.scheme in FOLD_SCHEMES else 1


def stratified(clips: pd.DataFrame, s: SplitConfig) -> tuple[pd.Series, list[str]]:
    """Stratified train/val/test by genre with ``split.seed``; the same for every training seed.

    Each class is shuffled and cut by the fractions (val and test get at least one clip), so the
    shares hold per class even for the demo's small classes, where sklearn's two-step
    ``train_test_split`` cannot stratify.
    """
    rng = np.random.default_rng(s.seed)
    label = pd.Series("", index=clips["clip_id"].values)
    for _, ids in clips.groupby("genre", sort=True)["clip_id"]:
        ids = ids.to_numpy()[rng.permutation(len(ids))]
        n_val = max(1, round(len(ids) * s.val))
        n_test = max(1, round(len(ids) * s.test))
        label[ids[:n_test]] = "test"
        label[ids[n_test:n_test + n_val]] = "val"
        label[ids[n_test + n_val:]] = "train"
    return label, []


def grouped_stratified(clips: pd.DataFrame, s: SplitConfig) -> tuple[pd.Series, list[str]]:
    """The stratified split with whole groups: F = round(1 / min(val, test)) stratified group folds
    (scikit-learn's ``StratifiedGroupKFold``, shuffled with ``split.seed``); test takes the first
    round(test x F) folds, val the next round(val x F), train the rest. The shares hold up to one
    fold (80/10/10: F = 10, exact up to group sizes), and the genre mix as far as the groups allow.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n = round(1 / min(s.val, s.test))
    n_test, n_val = max(1, round(s.test * n)), max(1, round(s.val * n))
    groups = clips["group"].nunique()
    if n_test + n_val >= n or groups < n:
        raise UserError(
            f"split.groups with split.train/val/test = {s.train:g}/{s.val:g}/{s.test:g} deals the "
            f"{groups} groups into {n} folds ({n_test} test, {n_val} val, the rest train): "
            + ("no fold is left for train" if n_test + n_val >= n else f"needs >= {n} groups")
        )
    folds = StratifiedGroupKFold(n_splits=n, shuffle=True, random_state=s.seed)
    label = pd.Series("train", index=clips["clip_id"].values)
    for k, (_, part) in enumerate(folds.split(clips, clips["genre"], clips["group"])):
        if k < n_test + n_val:
            label.iloc[part] = "test" if k < n_test else "val"
    return label, []


def filtered(clips: pd.DataFrame, s: SplitConfig) -> tuple[pd.Series, list[str]]:
    """Kereliuk et al.'s artist/fault-filtered lists (443/197/290), as torchaudio embeds them."""
    lists = {"train": gtzan.filtered_train, "val": gtzan.filtered_valid, "test": gtzan.filtered_test}
    present = set(clips["clip_id"])
    label = pd.Series("", index=clips["clip_id"].values)
    notes = []
    for name, wanted in lists.items():
        missing = sorted(set(wanted) - present)
        if missing:
            notes.append(f"{name}: {len(missing)} listed clip(s) not in the corpus, dropped: "
                         + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        label[[c for c in wanted if c in present]] = name
    return label, notes


SCHEMES: dict[str, Callable[[pd.DataFrame, SplitConfig], tuple[pd.Series, list[str]]]] = {
    "stratified": stratified,
    "filtered": filtered,
}
# With split.groups: the same scheme keeping each group in one part. ``filtered`` is itself
# artist-filtered (fixed lists), so it is not re-drawn: ``make_split`` checks that the given groups
# do not cross its lists and fails naming those that do.
GROUPED_SCHEMES: dict[str, Callable[[pd.DataFrame, SplitConfig], tuple[pd.Series, list[str]]]] = {
    "stratified": grouped_stratified,
    "filtered": filtered,
}


def kfold(clips: pd.DataFrame, s: SplitConfig) -> pd.DataFrame:
    """Repeated stratified K-fold: rows (repeat, fold, clip_id, genre), each clip in one fold per repeat.

    Repeat r shuffles with seed ``split.seed + r`` (scikit-learn's ``StratifiedKFold``), so the
    repeats are independent re-partitions and the same for every training seed. In cell
    c = r * K + k the test set is fold k, validation is fold k + 1 (mod K), training is the other
    K - 2 folds (hear-eval-kit's layout): every clip is a test clip once and a validation clip once
    per repeat, which is what makes per-clip val-vs-test agreement measurable. K = 10 gives the
    original's 80/10/10 shares in every cell.

    With ``split.groups`` (a ``group`` column), scikit-learn's ``StratifiedGroupKFold`` with the
    same seeds: every clip of a group is in one fold of each repeat, so a group is never in two of
    a cell's train / val / test; the genre shares per fold hold as far as the group sizes allow.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    grouped = "group" in clips
    parts = []
    for r in range(s.repeats):
        kind = StratifiedGroupKFold if grouped else StratifiedKFold
        folds = kind(n_splits=s.folds, shuffle=True, random_state=s.seed + r)
        for k, (_, test) in enumerate(folds.split(clips, clips["genre"], clips.get("group"))):
            parts.append(clips.iloc[test].assign(repeat=r, fold=k))
    columns = ["repeat", "fold", "clip_id", "genre"] + (["group"] if grouped else [])
    table = pd.concat(parts)[columns]
    return table.sort_values(["repeat", "fold", "genre", "clip_id"]).reset_index(drop=True)


FOLD_SCHEMES: dict[str, Callable[[pd.DataFrame, SplitConfig], pd.DataFrame]] = {
    "kfold": kfold,
}


def repeat_fold(cell: int, folds: int | None) -> tuple[int, int]:
    """(repeat, fold) of training cell ``cell`` = repeat * ``folds`` + fold; (0, cell) for one split
    (``folds`` None)."""
    return divmod(cell, folds) if folds else (0, cell)


def cell_roles(table: pd.DataFrame, cell: int, folds: int) -> pd.Series:
    """clip_id -> 'train' | 'val' | 'test' in cell ``cell`` of a K-fold table (see ``kfold``)."""
    repeat, k = repeat_fold(cell, folds)
    rows = table[table["repeat"] == repeat]
    role = pd.Series("train", index=rows["clip_id"].to_numpy())
    role[rows.loc[rows["fold"] == k, "clip_id"].to_numpy()] = "test"
    role[rows.loc[rows["fold"] == (k + 1) % folds, "clip_id"].to_numpy()] = "val"
    return role


def make_split(manifest: pd.DataFrame, s: SplitConfig) -> tuple[pd.DataFrame, list[str]]:
    """Assign every usable clip; return the split table and notes.

    Single splits: (clip_id, genre, split) rows. Fold schemes: (repeat, fold, clip_id, genre).
    """
    clips = manifest.loc[manifest["status"] == "ok", ["clip_id", "genre"]].reset_index(drop=True)
    notes = []
    if s.groups:
        clips, notes = with_groups(clips, s.groups)
    counts = clips["genre"].value_counts()
    if s.scheme in FOLD_SCHEMES:
        if (counts < s.folds).any():
            raise UserError(
                f"split.scheme = {s.scheme} with split.folds = {s.folds} needs >= {s.folds} clips per "
                f"class; too few in: {', '.join(counts[counts < s.folds].index)}"
            )
        if s.groups and clips["group"].nunique() < s.folds:
            raise UserError(f"split.groups = {s.groups} has {clips['group'].nunique()} groups; "
                            f"split.folds = {s.folds} needs >= {s.folds}")
        return FOLD_SCHEMES[s.scheme](clips, s), notes
    if s.scheme == "stratified" and (counts < 3).any():
        raise UserError(
            f"split.scheme = stratified needs >= 3 clips per class; too few in: "
            f"{', '.join(counts[counts < 3].index)}"
        )
    label, more = (GROUPED_SCHEMES if s.groups else SCHEMES)[s.scheme](clips, s)
    clips["split"] = label.reindex(clips["clip_id"]).values
    clips = clips[clips["split"] != ""].sort_values(["split", "genre", "clip_id"])
    if s.groups:
        if s.scheme == "filtered":
            _require_groups_within_parts(clips, s.groups)
        clips = clips[["clip_id", "genre", "split", "group"]]
    return clips.reset_index(drop=True), notes + more


# --------------------------------------------------------------------------- groups


def read_groups(path: str | Path) -> pd.Series:
    """clip_id -> group from the CSV ``path`` (header ``clip_id,group``; one row per clip)."""
    path = Path(path)
    where = f"split.groups = {path}"
    if not path.is_file():
        raise UserError(f"{where}: file not found; expected a CSV with header clip_id,group")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{where}: not a readable CSV ({' '.join(str(err).split())})") from None
    if list(table.columns) != list(GROUP_COLUMNS):
        raise UserError(f"{where}: columns {list(table.columns)}; expected exactly clip_id,group")
    table = table.apply(lambda col: col.str.strip())
    blank = table.loc[table["group"] == "", "clip_id"].tolist()
    if blank:
        raise UserError(f"{where}: {len(blank)} row(s) with an empty group: {_some(blank)}")
    twice = table.loc[table["clip_id"].duplicated(), "clip_id"].unique().tolist()
    if twice:
        raise UserError(f"{where}: {len(twice)} clip(s) listed more than once: {_some(twice)}; "
                        "give each clip one row")
    return table.set_index("clip_id")["group"]


def with_groups(clips: pd.DataFrame, path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """``clips`` with a ``group`` column from ``path``; every clip must have one.

    Rows naming clips the corpus does not hold (e.g. GTZAN's unreadable ``jazz.00054``, skipped by
    the data stage) are ignored and counted in a note.
    """
    groups = read_groups(path)
    found = clips["clip_id"].map(groups)
    missing = clips.loc[found.isna(), "clip_id"].tolist()
    if missing:
        raise UserError(f"split.groups = {path}: {len(missing)} of {len(clips)} clips have no group: "
                        f"{_some(missing)}; add a clip_id,group row for each")
    unknown = sorted(set(groups.index) - set(clips["clip_id"]))
    notes = [f"split.groups = {path} names {len(unknown)} clip(s) not in the corpus (ignored): "
             f"{_some(unknown)}"] if unknown else []
    return clips.assign(group=found.to_numpy()), notes


def _require_groups_within_parts(table: pd.DataFrame, path: str | Path) -> None:
    """Fail naming the groups that span two of train / val / test (the fixed ``filtered`` lists)."""
    parts = table.groupby("group")["split"].nunique()
    crossing = parts[parts > 1].index.tolist()
    if crossing:
        raise UserError(f"split.groups = {path}: {len(crossing)} group(s) span two of train/val/test in "
                        f"the fixed lists of split.scheme = filtered: {_some(crossing)}; use "
                        "split.scheme = stratified or kfold, which keep each group whole")


def _some(items: list) -> str:
    """The first ``SHOWN`` items, then "..." if there are more."""
    return ", ".join(map(str, items[:SHOWN])) + (", ..." if len(items) > SHOWN else "")


def groups_digest(path: str | Path | None) -> str | None:
    """SHA-256 (16 hex digits) of the groups file, None without one: it decides the split's bytes,
    and DVC cannot list an optional file as a dependency (see dvc.yaml's features stage)."""
    if not path:
        return None
    if not Path(path).is_file():
        raise UserError(f"split.groups = {path}: file not found; expected a CSV with header clip_id,group")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]

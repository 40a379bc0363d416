"""Split schemes (a registry): stratified train/val/test, or GTZAN's fault-filtered lists."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from torchaudio.datasets import gtzan

from ..config import Params
from ..errors import UserError

SPLITS = ("train", "val", "test")


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

    @classmethod
    def from_params(cls, p: Params) -> SplitConfig:
        s = p["split"]
        return cls(s["scheme"], s["train"], s["val"], s["test"], s["seed"], s["folds"], s["repeats"])

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


def kfold(clips: pd.DataFrame, s: SplitConfig) -> pd.DataFrame:
    """Repeated stratified K-fold: rows (repeat, fold, clip_id, genre), each clip in one fold per repeat.

    Repeat r shuffles with seed ``split.seed + r`` (scikit-learn's ``StratifiedKFold``), so the
    repeats are independent re-partitions and the same for every training seed. In cell
    c = r * K + k the test set is fold k, validation is fold k + 1 (mod K), training is the other
    K - 2 folds (hear-eval-kit's layout): every clip is a test clip once and a validation clip once
    per repeat, which is what makes per-clip val-vs-test agreement measurable. K = 10 gives the
    original's 80/10/10 shares in every cell.
    """
    from sklearn.model_selection import StratifiedKFold

    parts = []
    for r in range(s.repeats):
        folds = StratifiedKFold(n_splits=s.folds, shuffle=True, random_state=s.seed + r)
        for k, (_, test) in enumerate(folds.split(clips, clips["genre"])):
            parts.append(clips.iloc[test].assign(repeat=r, fold=k))
    table = pd.concat(parts)[["repeat", "fold", "clip_id", "genre"]]
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
    counts = clips["genre"].value_counts()
    if s.scheme in FOLD_SCHEMES:
        if (counts < s.folds).any():
            raise UserError(
                f"split.scheme = {s.scheme} with split.folds = {s.folds} needs >= {s.folds} clips per "
                f"class; too few in: {', '.join(counts[counts < s.folds].index)}"
            )
        return FOLD_SCHEMES[s.scheme](clips, s), []
    if s.scheme == "stratified" and (counts < 3).any():
        raise UserError(
            f"split.scheme = stratified needs >= 3 clips per class; too few in: "
            f"{', '.join(counts[counts < 3].index)}"
        )
    label, notes = SCHEMES[s.scheme](clips, s)
    clips["split"] = label.reindex(clips["clip_id"]).values
    clips = clips[clips["split"] != ""].sort_values(["split", "genre", "clip_id"])
    return clips.reset_index(drop=True), notes

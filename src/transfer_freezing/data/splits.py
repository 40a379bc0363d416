"""Split schemes (a registry): stratified train/val/test, or GTZAN's fault-filtered lists."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from torchaudio.datasets import gtzan

from ..config import Params
from ..errors import UserError

SPLITS = ("train", "val", "test")


def stratified(clips: pd.DataFrame, p: Params) -> tuple[pd.Series, list[str]]:
    """Stratified train/val/test by genre with ``split.seed``; the same for every training seed.

    Each class is shuffled and cut by the fractions (val and test get at least one clip), so the
    shares hold per class even for the demo's small classes, where sklearn's two-step
    ``train_test_split`` cannot stratify.
    """
    s = p["split"]
    rng = np.random.default_rng(s["seed"])
    label = pd.Series("", index=clips["clip_id"].values)
    for _, ids in clips.groupby("genre", sort=True)["clip_id"]:
        ids = ids.to_numpy()[rng.permutation(len(ids))]
        n_val = max(1, round(len(ids) * s["val"]))
        n_test = max(1, round(len(ids) * s["test"]))
        label[ids[:n_test]] = "test"
        label[ids[n_test:n_test + n_val]] = "val"
        label[ids[n_test + n_val:]] = "train"
    return label, []


def filtered(clips: pd.DataFrame, p: Params) -> tuple[pd.Series, list[str]]:
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


SCHEMES: dict[str, Callable[[pd.DataFrame, Params], tuple[pd.Series, list[str]]]] = {
    "stratified": stratified,
    "filtered": filtered,
}


def make_split(manifest: pd.DataFrame, p: Params) -> tuple[pd.DataFrame, list[str]]:
    """Assign every usable clip a split; return (clip_id, genre, split) rows and notes."""
    clips = manifest.loc[manifest["status"] == "ok", ["clip_id", "genre"]].reset_index(drop=True)
    counts = clips["genre"].value_counts()
    if p["split"]["scheme"] == "stratified" and (counts < 3).any():
        raise UserError(
            f"split.scheme = stratified needs >= 3 clips per class; too few in: "
            f"{', '.join(counts[counts < 3].index)}"
        )
    label, notes = SCHEMES[p["split"]["scheme"]](clips, p)
    clips["split"] = label.reindex(clips["clip_id"]).values
    clips = clips[clips["split"] != ""].sort_values(["split", "genre", "clip_id"])
    return clips.reset_index(drop=True), notes

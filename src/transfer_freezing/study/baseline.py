"""A floor to beat: regularised logistic regression on per-mel-band statistics of the stored features.

Every stored feature image is a log-mel spectrogram resized to (H, W): its rows are mel bands (low
to high), its columns time. Per band the baseline takes the mean and standard deviation over time
and the mean absolute frame-to-frame change (how much the band moves), so 3 * H numbers per clip
that ignore where in time anything happens: a timbre / spectral-envelope summary, the obvious
non-deep model for genre. The numbers go through a ``StandardScaler`` and an L2-regularised
multinomial ``LogisticRegression``; its inverse regularisation ``C`` is picked from ``C_GRID`` by
validation accuracy (ties: the stronger regularisation), exactly as the deep runs pick their epoch,
then the fitted model is scored once on test. It trains on the cell's train split only (never val
or test), so it is scored on the same clips of the same folds as the deep runs it is compared with.

``fit_baseline`` returns per-clip predictions in the train stage's ``predictions.csv`` format
(``split, clip_id, label, pred, correct, p_<class>...``) and the accuracies in per cent.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from ..data.inputs import Split
from ..errors import UserError

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # inverse L2 strength, on standardised features
MAX_ITER = 5000
SCORED = ("val", "test")  # the splits whose predictions are returned, as the train stage writes them


def band_statistics(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, H, W) stored images -> (N, 3 H) floats: per band mean, std and mean |delta| over time."""
    x = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    x = x.astype(np.float32) / (255.0 if x.dtype == np.uint8 else 1.0)
    if x.ndim != 3:
        raise UserError(f"baseline: expected stored images of shape (N, H, W), got {x.shape}")
    parts = [x.mean(axis=2), x.std(axis=2)]
    parts.append(np.abs(np.diff(x, axis=2)).mean(axis=2) if x.shape[2] > 1 else np.zeros_like(parts[0]))
    return np.concatenate(parts, axis=1)


def _model(c: float, seed: int) -> Pipeline:
    return Pipeline([("scale", StandardScaler()),
                     ("logreg", LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed))])


def _probabilities(model: Pipeline, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Class probabilities over all ``n_classes`` (a class absent from train gets probability 0)."""
    probs = np.zeros((len(x), n_classes))
    probs[:, model.classes_] = model.predict_proba(x)
    return probs


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float((probs.argmax(axis=1) == labels).mean())


def fit_baseline(splits: dict[str, Split], classes: list[str], seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Fit on ``splits['train']``, pick C on ``val``, score ``val`` and ``test``.

    Returns (predictions, metrics): one row per val/test clip with ``split, clip_id, label, pred,
    correct, p_<class>...`` (the train stage's ``predictions.csv``), and ``train_acc``, ``val_acc``,
    ``test_acc`` (per cent), the chosen ``C``, ``val_acc_by_C`` and ``n_features``. Deterministic for
    a given ``seed`` and data.
    """
    missing = [name for name in ("train", *SCORED) if name not in splits or not len(splits[name])]
    if missing:
        raise UserError(f"baseline: needs non-empty train, val and test splits; missing or empty: "
                        f"{', '.join(missing)}")
    x = {name: band_statistics(s.images) for name, s in splits.items() if name in ("train", *SCORED)}
    y = {name: np.asarray(splits[name].labels.tolist(), dtype=np.int64) for name in x}
    if len(np.unique(y["train"])) < 2:
        raise UserError("baseline: the train split holds a single class; nothing to discriminate")
    n = len(classes)
    fitted: dict[float, tuple[Pipeline, float]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the weakest regularisation may stop early
        for c in C_GRID:
            model = _model(c, seed).fit(x["train"], y["train"])
            fitted[c] = (model, _accuracy(_probabilities(model, x["val"], n), y["val"]))
    best = max(C_GRID, key=lambda c: (fitted[c][1], -c))  # ties: the stronger regularisation
    model = fitted[best][0]
    probs = {name: _probabilities(model, x[name], n) for name in x}
    metrics = {f"{name}_acc": _accuracy(probs[name], y[name]) for name in ("train", *SCORED)}
    metrics |= {"C": best, "val_acc_by_C": {c: acc for c, (_, acc) in fitted.items()},
                "n_features": int(x["train"].shape[1])}
    return _table(splits, probs, y, classes), metrics


def _table(splits: dict[str, Split], probs: dict[str, np.ndarray], y: dict[str, np.ndarray],
           classes: list[str]) -> pd.DataFrame:
    parts = []
    for name in SCORED:
        frame = pd.DataFrame({"split": name, "clip_id": list(splits[name].clip_ids),
                              "label": [classes[i] for i in y[name]],
                              "pred": [classes[i] for i in probs[name].argmax(axis=1)]})
        frame["correct"] = (frame["label"] == frame["pred"]).astype(int)
        p = pd.DataFrame(probs[name].round(6), columns=[f"p_{c}" for c in classes])
        parts.append(pd.concat([frame, p], axis=1))
    return pd.concat(parts, ignore_index=True)


def fit_cell(store, cell: int = 0, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """``fit_baseline`` on training cell ``cell`` of a ``data.features.Store``, with its class names."""
    return fit_baseline(store.load_cell(cell), store.read_meta()["classes"], seed)

"""Scores beyond accuracy from a run's per-clip class probabilities: macro-F1, NLL, calibration error.

Each score is a library call on the stored probabilities (scikit-learn, torchmetrics), never a
hand-written formula; ``SCORES`` is the registry ``compare`` reads (name, direction, unit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score, log_loss
from torchmetrics.functional.classification import multiclass_calibration_error

ECE_BINS = 15  # equal-width bins of the top-class confidence over [0, 1] (torchmetrics' default)


@dataclass(frozen=True)
class Score:
    """One score: how it reads (``higher_is_better``) and its unit in tables."""

    doc: str
    higher_is_better: bool
    unit: str


# name -> what it is; metrics.json, MLflow (``scores/<split>_<name>``) and compare use these names
SCORES: dict[str, Score] = {
    "macro_f1": Score("macro-averaged F1 over the classes (sklearn f1_score, zero_division 0), in %",
                      True, "pp"),
    "nll": Score("negative log-likelihood of the true class, mean over clips (sklearn log_loss, nats)",
                 False, "nats"),
    "ece": Score(f"expected calibration error (torchmetrics multiclass_calibration_error: top-class "
                 f"confidence, {ECE_BINS} equal-width bins, L1), in %", False, "pp"),
}


def scores(labels: torch.Tensor | np.ndarray, probs: torch.Tensor | np.ndarray, num_classes: int
           ) -> dict[str, float]:
    """``SCORES`` of one split: ``labels`` (N,) class indices, ``probs`` (N, C) softmax rows.

    Predictions are the argmax of ``probs``; every class in ``range(num_classes)`` counts in the
    macro average and the log-loss, present in this split or not.
    """
    y, p = _tensor(labels).long(), _tensor(probs).float()
    classes = list(range(num_classes))
    pred = p.argmax(1)
    rows = p.double()
    rows = rows / rows.sum(1, keepdim=True)  # float32 softmax rows sum to 1 +- 1e-7; log_loss checks 1e-8
    return {
        "macro_f1": 100.0 * float(f1_score(y.numpy(), pred.numpy(), labels=classes, average="macro",
                                           zero_division=0)),
        "nll": float(log_loss(y.numpy(), rows.numpy(), labels=classes)),
        "ece": 100.0 * float(multiclass_calibration_error(p, y, num_classes=num_classes, n_bins=ECE_BINS,
                                                          norm="l1")),
    }


def _tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A CPU tensor of ``values`` (a copy of an array: a read-only one, e.g. a CSV's, is fine)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu()
    return torch.from_numpy(np.array(values))

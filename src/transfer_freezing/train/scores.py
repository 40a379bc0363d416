"""Scores beyond accuracy from a run's per-clip class probabilities: macro-F1, NLL, calibration error.

Each is a few torch operations on the stored probabilities, written out here because the libraries
that have them (scikit-learn's ``f1_score`` and ``log_loss``, torchmetrics'
``multiclass_calibration_error``) cost every train stage 1.3 s of imports, more than a demo run's
training; tests/test_scores.py checks each against its library on random and edge-case inputs.
``SCORES`` is the registry ``compare`` reads (name, direction, unit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ECE_BINS = 15  # equal-width bins of the top-class confidence over [0, 1] (torchmetrics' default)


@dataclass(frozen=True)
class Score:
    """One score: how it reads (``higher_is_better``) and its unit in tables."""

    doc: str
    higher_is_better: bool
    unit: str


# name -> what it is; metrics.json, MLflow (``scores/<split>_<name>``) and compare use these names
SCORES: dict[str, Score] = {
    "macro_f1": Score("macro-averaged F1 over the classes (as sklearn f1_score, zero_division 0), in %",
                      True, "pp"),
    "nll": Score("negative log-likelihood of the true class, mean over clips (as sklearn log_loss, nats)",
                 False, "nats"),
    "ece": Score(f"expected calibration error (as torchmetrics multiclass_calibration_error: top-class "
                 f"confidence, {ECE_BINS} equal-width bins, L1), in %", False, "pp"),
}


def scores(labels: torch.Tensor | np.ndarray, probs: torch.Tensor | np.ndarray, num_classes: int
           ) -> dict[str, float]:
    """``SCORES`` of one split: ``labels`` (N,) class indices, ``probs`` (N, C) softmax rows.

    Predictions are the argmax of ``probs``; every class in ``range(num_classes)`` counts in the
    macro average, present in this split or not.
    """
    y, p = _tensor(labels).long(), _tensor(probs).float()
    return {"macro_f1": 100.0 * macro_f1(y, p.argmax(1), num_classes), "nll": nll(y, p.double()),
            "ece": 100.0 * ece(y, p)}


def macro_f1(labels: torch.Tensor, pred: torch.Tensor, num_classes: int) -> float:
    """Mean over the classes of F1 = 2 TP / (2 TP + FP + FN); 0 for a class neither true nor predicted."""
    true = torch.bincount(labels, minlength=num_classes).double()
    said = torch.bincount(pred, minlength=num_classes).double()
    hits = torch.bincount(labels[labels == pred], minlength=num_classes).double()
    both = true + said  # 2 TP + FP + FN
    return float(torch.where(both > 0, 2 * hits / both.clamp(min=1), 0.0).mean())


def nll(labels: torch.Tensor, probs: torch.Tensor) -> float:
    """Mean -log p(true class) over clips, each row renormalised to sum 1 and clipped to [eps, 1 - eps]
    (float64 eps), as scikit-learn's log_loss."""
    rows = probs / probs.sum(1, keepdim=True)  # float32 softmax rows sum to 1 +- 1e-7
    eps = torch.finfo(torch.float64).eps
    true = rows.gather(1, labels[:, None]).squeeze(1).clamp(eps, 1 - eps)
    return float(-true.log().mean())


def ece(labels: torch.Tensor, probs: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Sum over ``bins`` equal-width bins of the top-class confidence of |accuracy - mean confidence|
    weighted by the bin's share of clips. A confidence on an edge goes to the bin above it, and 1.0
    to a bin of its own, as in torchmetrics (``bucketize(right=True)`` over the ``bins + 1`` edges)."""
    confidence, pred = probs.float().max(1)
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(confidence, edges, right=True) - 1
    count = torch.bincount(which, minlength=bins + 1).double()
    conf = torch.bincount(which, weights=confidence.double(), minlength=bins + 1)
    right = torch.bincount(which, weights=(pred == labels).double(), minlength=bins + 1)
    gap = (right - conf).abs()  # |accuracy - confidence| x the bin's count
    return float(gap.sum() / count.sum())


def _tensor(values: torch.Tensor | np.ndarray) -> torch.Tensor:
    """A CPU tensor of ``values`` (a copy of an array: a read-only one, e.g. a CSV's, is fine)."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu()
    return torch.from_numpy(np.array(values))

"""Per-run report artifacts: confusion matrix (PNG + JSON) and per-genre accuracy."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .. import atomic  # noqa: E402
from . import tracking


def per_class_accuracy(confusion: list[list[int]], classes: list[str]) -> dict[str, float]:
    cm = np.asarray(confusion)
    totals = cm.sum(1)
    return {c: float(100 * cm[i, i] / totals[i]) if totals[i] else float("nan")
            for i, c in enumerate(classes)}


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> None:
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted",
           ylabel="true", title="Test confusion matrix")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > cm.max() / 2 else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def log_confusion(confusion: list[list[int]], classes: list[str], out: Path) -> None:
    """Log the confusion matrix and per-genre accuracy of one run to the active MLflow run."""
    per_class = per_class_accuracy(confusion, classes)
    tracking.log_metrics({f"test_acc_{c}": v for c, v in per_class.items()})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        atomic.write_json(tmp / "confusion_matrix.json", {"classes": classes, "matrix": confusion})
        atomic.write_json(tmp / "per_genre_accuracy.json", per_class)
        plot_confusion(confusion, classes, tmp / "confusion_matrix.png")
        for name in ("confusion_matrix.json", "per_genre_accuracy.json", "confusion_matrix.png"):
            tracking.log_artifact(tmp / name, "evaluation")

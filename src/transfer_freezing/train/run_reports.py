"""Per-run report artifacts: confusion matrix (PNG + JSON), per-genre accuracy, diagnostics plot."""

from __future__ import annotations

import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .. import atomic  # noqa: E402
from . import tracking
from .diagnostics import part_order


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
    tracking.log_sectioned({f"test_acc_{c}": v for c, v in per_class.items()})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        atomic.write_json(tmp / "confusion_matrix.json", {"classes": classes, "matrix": confusion})
        atomic.write_json(tmp / "per_genre_accuracy.json", per_class)
        plot_confusion(confusion, classes, tmp / "confusion_matrix.png")
        for name in ("confusion_matrix.json", "per_genre_accuracy.json", "confusion_matrix.png"):
            tracking.log_artifact(tmp / name, "evaluation")


def plot_diagnostics(diagnostics: dict, path: Path) -> None:
    """Two panels by part: relative weight change (log scale; frozen parts at 0 are marked on the
    axis) and CKA between the initial and the fine-tuned representation per block."""
    names = sorted(diagnostics["parts"], key=part_order)
    change = np.array([_finite(diagnostics["parts"][n].get("weight_change")) for n in names])
    blocks = [n for n in names if "cka" in diagnostics["parts"][n]]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6.0, 0.45 * len(names)), 6.0))
    x = np.arange(len(names))
    moved = change > 0
    top.bar(x[moved], change[moved], color="C0")
    floor = change[moved].min() / 3 if moved.any() else 1e-6
    top.scatter(x[change == 0], np.full((change == 0).sum(), floor), marker="x", color="0.4",
                label="0 (frozen)")
    top.set(yscale="log", ylabel="‖θ − θ₀‖ / ‖θ₀‖", xticks=x, xticklabels=names,
            title=f"{diagnostics['model']} {diagnostics['freeze_mode']} seed {diagnostics['seed']} "
                  f"fold {diagnostics['fold']}")
    top.tick_params(axis="x", labelrotation=45)
    if (change == 0).any():
        top.legend(loc="best", fontsize="small")
    if blocks:
        values = [_finite(diagnostics["parts"][n]["cka"]) for n in blocks]
        bottom.plot(range(len(blocks)), values, marker="o", color="C1")
        bottom.set(xticks=range(len(blocks)), xticklabels=blocks, ylim=(min(-0.05, np.nanmin(values)), 1.05),
                   ylabel="CKA (initial, fine-tuned)",
                   xlabel=f"block output ({diagnostics['readout']}, {diagnostics['clips']} test clips)")
        bottom.tick_params(axis="x", labelrotation=45)
        bottom.grid(alpha=0.3)
    else:
        bottom.text(0.5, 0.5, "no CKA (train.diagnostics_clips < 4)", ha="center", va="center")
        bottom.set_axis_off()
    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _finite(value) -> float:
    return float(value) if value is not None else float("nan")


def log_diagnostics(diagnostics: dict, metrics: dict[str, float], json_path: Path) -> None:
    """Log one run's diagnostics to the active MLflow run: metrics, the JSON and the per-part plot."""
    tracking.log_sectioned(metrics)
    tracking.log_artifact(json_path, "diagnostics")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "diagnostics.png"
        plot_diagnostics(diagnostics, png)
        tracking.log_artifact(png, "diagnostics")

"""The sweep's figures, logged to its MLflow parent run: learning rate vs validation accuracy, and the
optimisation history (both from the summary the sweep writes as JSON)."""

from __future__ import annotations

from pathlib import Path


def plot_sweep(result: dict, folder: Path) -> list[Path]:
    """lr vs validation accuracy, and the optimisation history, as PNGs in ``folder``."""
    rows = [r for r in result["trials"] if r["state"] in ("complete", "pruned") and r["lr"] is not None]
    comp = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned" and r["last_val_acc"] is not None]
    title = f"{result['model']} / {result['freeze']}"

    fig, ax = _axes()
    ax.scatter([r["lr"] for r in comp], [r["value"] for r in comp], label="complete (best val acc)")
    ax.scatter([r["lr"] for r in pruned], [r["last_val_acc"] for r in pruned], marker="x",
               color="grey", label="pruned (last val acc)")
    ax.scatter([result["best_lr"]], [result["best_value"]], s=160, facecolors="none",
               edgecolors="red", label=f"best lr {result['best_lr']:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    lr_plot = _finish(fig, ax, f"{title}: learning rate vs validation accuracy", folder / "lr_vs_val_acc.png")

    fig, ax = _axes()
    ax.scatter([r["number"] for r in comp], [r["value"] for r in comp], label="complete")
    ax.scatter([r["number"] for r in pruned], [r["last_val_acc"] for r in pruned], marker="x",
               color="grey", label="pruned (last val acc)")
    best_so_far, xs, ys = float("-inf"), [], []
    for r in sorted(comp, key=lambda r: r["number"]):
        best_so_far = max(best_so_far, r["value"])
        xs.append(r["number"])
        ys.append(best_so_far)
    ax.step(xs, ys, where="post", color="red", label="best so far")
    ax.set_xlabel("trial")
    history = _finish(fig, ax, f"{title}: optimisation history", folder / "optimization_history.png")
    return [lr_plot, history]


def _axes():
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in worker processes

    fig = Figure(figsize=(6, 4), layout="constrained")
    return fig, fig.add_subplot()


def _finish(fig, ax, title: str, path: Path) -> Path:
    """The y label, title and legend both figures share; saved as ``path``."""
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return path

"""The sweep's figures, logged to its MLflow parent run: learning rate vs validation accuracy, and the
optimisation history (both from the summary the sweep writes as JSON)."""

from __future__ import annotations

from pathlib import Path


def plot_sweep(result: dict, folder: Path) -> list[Path]:
    """lr vs validation accuracy, and the optimisation history, as PNGs in ``folder``."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in worker processes

    rows = [r for r in result["trials"] if r["state"] in ("complete", "pruned") and r["lr"] is not None]
    comp = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned" and r["last_val_acc"] is not None]
    title = f"{result['model']} / {result['freeze']}"
    paths = []

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter([r["lr"] for r in comp], [r["value"] for r in comp], label="complete (best val acc)")
    ax.scatter([r["lr"] for r in pruned], [r["last_val_acc"] for r in pruned], marker="x",
               color="grey", label="pruned (last val acc)")
    ax.scatter([result["best_lr"]], [result["best_value"]], s=160, facecolors="none",
               edgecolors="red", label=f"best lr {result['best_lr']:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{title}: learning rate vs validation accuracy")
    ax.legend(fontsize="small")
    paths.append(folder / "lr_vs_val_acc.png")
    fig.savefig(paths[-1], dpi=120)

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
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
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"{title}: optimisation history")
    ax.legend(fontsize="small")
    paths.append(folder / "optimization_history.png")
    fig.savefig(paths[-1], dpi=120)
    return paths


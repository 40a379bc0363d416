"""The compare stage: fetch exactly the train stages' MLflow runs and write the freezing table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from .. import atomic
from ..config import Params
from ..errors import UserError
from ..train import stage as train_stage
from ..train import tracking
from . import figures, stats

# Logged params that must equal params.yaml for a run to belong to this comparison.
CHECKED_PARAMS = ("train.epochs", "train.batch_size", "train.momentum", "train.weight_decay",
                  "train.frozen_bn", "train.weights", "features.image_size", "data.source")
NAMES = {"md": "freezing_comparison.md", "csv": "freezing_comparison.csv",
         "png": "freezing_comparison.png", "runs": "freezing_runs.csv", "stats": "freezing_stats.json"}


def grid(p: Params) -> list[tuple[str, str, int]]:
    t = p["train"]
    return [(m, f, s) for m in t["models"] for f in t["freeze_modes"] for s in t["seeds"]]


def _run_ids(p: Params) -> dict[tuple[str, str, int], str]:
    ids = {}
    for cell in grid(p):
        path = train_stage.run_dir(p, *cell) / "run.json"
        if not path.is_file():
            raise UserError(f"{path} not found; run: dvc repro {train_stage.stage_name(*cell)}")
        ids[cell] = json.loads(path.read_text())["run_id"]
    return ids


def collect(p: Params) -> pd.DataFrame:
    """One row per grid cell, from the MLflow run its train stage recorded in run.json."""
    ids = _run_ids(p)
    fetched = tracking.fetch_runs(p, list(ids.values()))
    rows = []
    for cell, run_id in ids.items():
        rows.append(_row(p, cell, run_id, fetched[run_id]))
    return pd.DataFrame(rows)


def _row(p: Params, cell: tuple[str, str, int], run_id: str, run) -> dict:
    stage = f"dvc repro -f {train_stage.stage_name(*cell)}"
    uri = tracking.mask(tracking.tracking_uri(p))
    if run is None or run.info.lifecycle_stage == "deleted":
        raise UserError(f"MLflow run {run_id} of {'/'.join(map(str, cell))} is not in {uri}; "
                        f"re-run: {stage}")
    if run.info.status != "FINISHED":
        raise UserError(f"MLflow run {run_id} of {'/'.join(map(str, cell))} is {run.info.status}; "
                        f"re-run: {stage}")
    flat = {k: str(v) for k, v in _flat(p).items()}
    for key in CHECKED_PARAMS:
        logged = run.data.params.get(key)
        if logged != flat[key]:
            raise UserError(f"MLflow run {run_id}: {key} was {logged!r}, params.yaml says "
                            f"{flat[key]!r}; re-run: {stage}")
    m = run.data.metrics
    return {"model": cell[0], "freeze_mode": cell[1], "seed": cell[2], "run_id": run_id,
            "test_acc": m["test_acc"], "best_val_acc": m["best_val_acc"],
            "trainable_share": m["trainable_share"], "frozen_blocks": int(m["frozen_blocks"]),
            "lr": float(run.data.params["run.lr"]),
            "lr_source": run.data.tags.get("lr_source", "fixed")}


def _flat(p: Params) -> dict:
    from ..config import flat

    return flat(p)


def write_outputs(runs: pd.DataFrame, out: Path, reference: str, confidence: float) -> pd.DataFrame:
    """Summary table (Markdown + CSV), per-run CSV, statistics JSON and the figure under ``out``."""
    summary = stats.summarize(runs, reference_mode=reference, confidence=confidence)
    atomic.write_text(out / NAMES["md"], stats.to_markdown(summary) + "\n")
    atomic.write_text(out / NAMES["csv"], summary.to_csv(index=False))
    atomic.write_text(out / NAMES["runs"], runs.to_csv(index=False))
    atomic.write_json(out / NAMES["stats"], _stats_json(summary))
    figures.plot_comparison(runs, summary, out / NAMES["png"])
    return summary


def _stats_json(summary: pd.DataFrame) -> dict:
    tree: dict = {}
    for row in summary.to_dict("records"):
        key = f"{row['model']}/{row['freeze_mode']}" + (
            f"/{row['lr_source']}" if row.get("lr_source", "fixed") != "fixed" else "")
        tree[key] = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                     for k, v in row.items() if k in ("n", "test_mean", "test_std", "ci_low",
                                                       "ci_high", "val_mean", "diff_vs_ref",
                                                       "t_p", "t_p_holm", "wilcoxon_p",
                                                       "wilcoxon_p_holm", "cohens_dz")}
    return tree


def from_pipeline(p: Params) -> pd.DataFrame:
    runs = collect(p)
    out = Path(p["compare"]["out"])
    summary = write_outputs(runs, out, p["compare"]["reference_mode"], p["compare"]["confidence"])
    _log_summary_run(p, runs, out)
    print(stats.to_markdown(summary))
    return summary


def from_csv(p: Params, csvs: list[str], out: str | None = None) -> pd.DataFrame:
    """Summarise per-seed CSVs together, e.g. a fixed-lr and a tuned-lr study side by side."""
    runs = pd.concat([stats.read_runs_csv(csv) for csv in csvs], ignore_index=True)
    summary = write_outputs(runs, Path(out or p["compare"]["out"]), p["compare"]["reference_mode"],
                            p["compare"]["confidence"])
    print(stats.to_markdown(summary))
    return summary


def _log_summary_run(p: Params, runs: pd.DataFrame, out: Path) -> None:
    tracking.connect(p)
    tags = {"kind": "freezing_comparison", **tracking.git_tags()}
    with tracking.run("compare/freezing", tags=tags):
        tracking.log_params({"compare.reference_mode": p["compare"]["reference_mode"],
                             "compare.confidence": p["compare"]["confidence"],
                             "n_runs": len(runs)})
        for name in NAMES.values():
            tracking.log_artifact(out / name, "comparison")

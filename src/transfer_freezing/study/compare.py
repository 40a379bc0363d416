"""The compare stage: exactly the train stages' MLflow runs and per-clip predictions -> table, verdicts."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .. import atomic, config
from ..config import Params
from ..data import features
from ..errors import UserError
from ..model import freezing
from ..train import diagnostics, scores, tracking
from ..train import stage as train_stage
from . import baseline, evaluation, figures, inference, stats

# Logged params that must equal the run's recipe in params.yaml for it to belong to this comparison.
CHECKED_PARAMS = ("train.epochs", "train.batch_size", "train.momentum", "train.weight_decay",
                  "train.frozen_bn", "train.weights")
NAMES = {"md": "freezing_comparison.md", "csv": "freezing_comparison.csv",
         "png": "freezing_comparison.png", "runs": "freezing_runs.csv", "stats": "freezing_stats.json",
         "forest": "freezing_forest.png", "depth": "freezing_depth.png", "baseline": "baseline.csv",
         "conditions": "condition_contrast.csv", "diagnostics": "freezing_diagnostics.csv",
         "diagnostics_png": "freezing_diagnostics.png", "interaction": "recipe_interaction.csv"}
# Trainable-share budgets of the ranked table (<= 1 %, <= 10 %, all).
BUDGETS = ((0.01, "≤ 1 %"), (0.10, "≤ 10 %"), (1.0, "all"))
DIAGNOSTICS = ("weight_change", "cka")  # the per-part MLflow metric families of train/diagnostics.py


@dataclass(frozen=True)
class CompareConfig:
    """The compare stage's inputs, resolved once: the grid's cells, where their runs are, the test."""

    cells: tuple[train_stage.Cell, ...]  # model, freeze mode, seed, fold cell, recipe
    models_out: Path
    tracking: tracking.Tracking
    reference: str
    confidence: float
    out: Path
    expected_params: dict[str, dict[str, str]] = field(default_factory=dict)  # per recipe
    features_params_hash: str = ""
    margin: float = 1.0
    folds: int | None = None  # K of a fold scheme (cell = repeat * K + fold), None for one split
    features: features.Store | None = None
    stages: dict[train_stage.Cell, str] = field(default_factory=dict)  # a cell's DVC stage, if not train@
    lr_sources: dict[str, str] = field(default_factory=dict)  # recipe -> fixed | tuned

    @classmethod
    def from_params(cls, p: Params) -> CompareConfig:
        t = p["train"]
        cells = tuple(train_stage.grid(p))  # every recipe's cells: one table, the recipe a column
        expected = {}
        for name in config.grid_recipes(p):
            resolved = config.recipe(p, name)
            expected[name] = {k: str(resolved[k.split(".", 1)[1]]) for k in CHECKED_PARAMS}
            expected[name]["run.image_size"] = str(p["features"]["image_size"])
        folds = p["split"]["folds"] if p["split"]["scheme"] == "kfold" else None
        return cls(cells, Path(t["out"]), tracking.Tracking.from_params(p), p["compare"]["reference_mode"],
                   p["compare"]["confidence"], Path(p["compare"]["out"]), expected,
                   features.params_hash(p), p["compare"]["equivalence_margin"], folds,
                   features.Store.from_params(p), train_stage.stages(p),
                   {name: train_stage.source_of(p, name) for name in config.grid_recipes(p)})

    def stage(self, cell: train_stage.Cell) -> str:
        """The DVC stage that (re)makes ``cell``."""
        return self.stages.get(cell) or train_stage.dvc_stage(*cell)

    def repeat_fold(self, cell: int) -> tuple[int, int]:
        return divmod(cell, self.folds) if self.folds else (0, cell)


def _run_ids(c: CompareConfig) -> dict[train_stage.Cell, str]:
    ids = {}
    for cell in c.cells:
        path = train_stage.run_dir(c.models_out, *cell) / "run.json"
        if not path.is_file():
            raise UserError(f"{path} not found; run: dvc repro {c.stage(cell)}")
        ids[cell] = json.loads(path.read_text())["run_id"]
    return ids


def collect(c: CompareConfig) -> pd.DataFrame:
    """One row per grid cell, from the MLflow run its train stage recorded in run.json."""
    ids = _run_ids(c)
    fetched = tracking.fetch_runs(c.tracking, list(ids.values()))
    return pd.DataFrame([_row(c, cell, run_id, fetched[run_id]) for cell, run_id in ids.items()])


def _row(c: CompareConfig, cell: train_stage.Cell, run_id: str, run) -> dict:
    stage = f"dvc repro -f {c.stage(cell)}"
    uri = tracking.mask(c.tracking.uri)
    if run is None or run.info.lifecycle_stage == "deleted":
        raise UserError(f"MLflow run {run_id} of {'/'.join(map(str, cell))} is not in {uri}; "
                        f"re-run: {stage}")
    if run.info.status != "FINISHED":
        raise UserError(f"MLflow run {run_id} of {'/'.join(map(str, cell))} is {run.info.status}; "
                        f"re-run: {stage}")
    for key, want in c.expected_params.get(cell[4], {}).items():
        logged = run.data.params.get(key)
        if logged != want:
            raise UserError(f"MLflow run {run_id}: {key} was {logged!r}, params.yaml (recipe {cell[4]}) "
                            f"says {want!r}; re-run: {stage}")
    trained_on = run.data.tags.get("features_params_hash")
    if c.features_params_hash and trained_on != c.features_params_hash:
        raise UserError(f"MLflow run {run_id} trained on features built with other data/split/features "
                        f"params (hash {trained_on}, now {c.features_params_hash}); re-run: {stage}")
    m = tracking.flat_metrics(run.data.metrics)
    repeat, fold = c.repeat_fold(cell[3])
    return {"model": cell[0], "freeze_mode": cell[1], "seed": cell[2], "fold": fold, "repeat": repeat,
            "cell": cell[3], "run_id": run_id,
            "test_acc": m["test_acc"], "best_val_acc": m["best_val_acc"],
            "trainable_share": m["trainable_share"], "frozen_blocks": int(m["frozen_blocks"]),
            "lr": float(run.data.params["run.lr"]), "recipe": cell[4],
            "lr_source": c.lr_sources.get(cell[4], "fixed"),
            **{f"test_{k}": m.get(f"test_{k}", math.nan) for k in scores.SCORES},
            **{k: v for k, v in sorted(m.items()) if k.split(".", 1)[0] in DIAGNOSTICS}}


def predictions(c: CompareConfig, runs: pd.DataFrame) -> dict[tuple, pd.DataFrame]:
    """Every run's per-clip predictions (its DVC output), keyed as ``evaluation.clip_table`` wants."""
    found = {}
    for row in runs.to_dict("records"):
        cell = (row["model"], row["freeze_mode"], row["seed"], row["cell"], row["recipe"])
        path = train_stage.run_dir(c.models_out, *cell) / train_stage.PREDICTIONS
        if not path.is_file():
            stage = c.stage(cell)
            raise UserError(f"{path} not found; re-run: dvc repro -f {stage}")
        key = (row["model"], row["recipe"], row["freeze_mode"], row["seed"], row["fold"], row["repeat"])
        found[key] = pd.read_csv(path)
    return found


def baseline_rows(c: CompareConfig, runs: pd.DataFrame) -> pd.DataFrame:
    """The non-deep floor (``baseline``) on every fold cell the runs used: the same clips."""
    rows = []
    for cell in sorted(set(runs["cell"])):
        _, acc = baseline.fit_cell(c.features, int(cell))
        repeat, fold = c.repeat_fold(int(cell))
        rows.append({"cell": int(cell), "repeat": repeat, "fold": fold, "val_acc": acc["val_acc"],
                     "test_acc": acc["test_acc"], "C": acc["C"]})
    return pd.DataFrame(rows)


def write_outputs(runs: pd.DataFrame, out: Path, reference: str, confidence: float,
                  clips: dict[str, pd.DataFrame] | None = None, margin: float = 1.0,
                  folds: int | None = None, floor: pd.DataFrame | None = None) -> pd.DataFrame:
    """Main table (Markdown), full table (CSV), per-run CSV, statistics JSON and figures under ``out``.

    Every mode against ``reference``: the difference with the design model's interval, its verdict
    against ``margin`` (one Holm family per model and recipe) and the MDD — from per-clip
    ``clips`` (test, val) when given, else from the per-run accuracies; plus the study-level checks
    (val-vs-test agreement, the original's headline). Secondary per-run tests go to the CSV and
    JSON only.
    """
    summary = stats.summarize(runs, reference_mode=reference, confidence=confidence)
    checks: dict = {}
    if clips is not None:
        judged, checks = evaluation.verdicts(clips["test"], clips.get("val"), reference, margin,
                                             confidence, folds)
        heading = "### Decisive comparison: per-clip predictions"
    else:
        judged = evaluation.verdicts_from_runs(stats.validate_runs(runs), reference, margin, confidence)
        heading = "### Comparison: per-run accuracies"
    if len(judged):
        keys = [k for k in stats.group_keys(summary) if k in judged.columns] + ["freeze_mode"]
        summary = summary.merge(judged.drop(columns=["mode", "reference", "margin", "confidence"]),
                                on=keys, how="left", suffixes=("", "_judged"))
        summary.attrs["confidence"] = confidence  # a merge drops the attrs the table labels use
        if judged["low"].notna().any():
            figures.plot_forest(judged.assign(reference_mode=reference), margin, out / NAMES["forest"],
                                title="mode − reference: difference and interval (design model)")
        else:  # one paired run per mode: no run-to-run variance, so no interval to draw
            figures.plot_message(f"{inference.ONE_RUN} (add seeds, folds or repeats)", out / NAMES["forest"])
    else:  # the reference mode alone (a baseline-only study): the figure says so, as DVC expects it
        figures.plot_message(f"only the reference mode {reference}: no difference to draw "
                             "(add freeze modes)", out / NAMES["forest"])
    markdown = f"{heading}\n\n{stats.to_markdown(summary, margin)}" + _checks_markdown(checks)
    if clips is not None:
        markdown += _write_interactions(clips["test"], reference, margin, confidence, out, checks)
    if floor is not None and len(floor):
        atomic.write_text(out / NAMES["baseline"], floor.to_csv(index=False))
        checks["baseline"] = {"test_mean": float(floor["test_acc"].mean()), "cells": len(floor)}
        markdown += _baseline_markdown(summary, floor)
    markdown += budget_markdown(summary)
    summary, section = _scores(summary, runs, reference, confidence)
    markdown += section + _write_diagnostics(runs, out)
    atomic.write_text(out / NAMES["md"], markdown + "\n")
    atomic.write_text(out / NAMES["csv"], summary.to_csv(index=False))
    atomic.write_text(out / NAMES["runs"], runs.to_csv(index=False))
    atomic.write_json(out / NAMES["stats"], _stats_json(summary, checks))
    figures.plot_comparison(runs, summary, out / NAMES["png"])
    if runs["trainable_share"].notna().all() if "trainable_share" in runs else False:
        figures.plot_depth(runs, out / NAMES["depth"])
    return summary


# The scores beyond accuracy (train/scores.py) as per-run columns -> higher is better.
SCORE_COLUMNS = {f"test_{name}": score.higher_is_better for name, score in scores.SCORES.items()}
SCORE_FIELDS = ("mean", "estimate", "low", "high", "p_different_holm", "verdict")


def _scores(summary: pd.DataFrame, runs: pd.DataFrame, reference: str, confidence: float
            ) -> tuple[pd.DataFrame, str]:
    """``summary`` with every score beyond accuracy as columns ``<score>_<field>`` (the CSV), and
    the report's section on them (Markdown; empty when no run logged them)."""
    table = evaluation.score_differences(runs, reference, confidence, SCORE_COLUMNS)
    if table.empty:
        return summary, ""
    keys = [k for k in stats.group_keys(runs) if k in summary.columns] + ["freeze_mode"]
    for column, part in table.groupby("score", sort=False):
        fields = [f for f in SCORE_FIELDS if f in part.columns]
        wide = part[keys + fields].rename(columns={f: f"{column}_{f}" for f in fields})
        summary = summary.merge(wide, on=keys, how="left")
    summary.attrs["confidence"] = confidence
    level = f"{100 * confidence:g} %"
    lines = ["", "### Scores beyond accuracy (test clips)", "",
             f"Per run from its per-clip probabilities (train/scores.py): {_score_docs()}. Mean over runs; "
             f"mode − {reference} with its {level} interval, paired on (seed, repeat, fold) at run level "
             "(study/inference.py `compare_scores`), Holm over the modes per score.", ""]
    for values, group in table.groupby([k for k in keys if k != "freeze_mode"], sort=False):
        named = dict(zip([k for k in keys if k != "freeze_mode"],
                         values if isinstance(values, tuple) else (values,), strict=True))
        label = ", ".join(f"{k} {v}" for k, v in named.items())
        wide = group.pivot_table(index="freeze_mode", columns="score", values="mean", sort=False)
        shown = pd.DataFrame(index=wide.index)
        for column in wide.columns:
            rows = group[group["score"] == column].set_index("freeze_mode")
            shown[column.removeprefix("test_")] = [_score_cell(rows.loc[m]) for m in wide.index]
        lines += [f"**{label}**", "", shown.reset_index().rename(columns={"freeze_mode": "freeze mode"})
                  .to_markdown(index=False, disable_numparse=True), ""]
    return summary, "\n".join(lines) + "\n"


def _score_docs() -> str:
    return "; ".join(f"{name}: {score.doc}" for name, score in scores.SCORES.items())


def _score_cell(row: pd.Series) -> str:
    """``mean (difference [low, high], verdict)`` of one mode's score; the reference its mean only."""
    text = f"{row['mean']:.3g}"
    if pd.isna(row.get("estimate", math.nan)):
        return text
    if pd.isna(row["low"]):
        return f"{text} ({row['estimate']:+.3g}, {row['note']})"
    return f"{text} ({row['estimate']:+.3g} [{row['low']:+.3g}, {row['high']:+.3g}], {row['verdict']})"


def _write_interactions(test: pd.DataFrame, reference: str, margin: float, confidence: float, out: Path,
                        checks: dict) -> str:
    """The mode x recipe interactions (``evaluation.interactions``) to CSV and ``checks``; returns
    the Markdown section (none with fewer than two recipes)."""
    table = evaluation.interactions(test, reference, margin, confidence)
    atomic.write_text(out / NAMES["interaction"], table.to_csv(index=False))
    if table.empty:
        return ""
    for r in table.to_dict("records"):
        key = f"{r['model']}/{r['freeze_mode']}/{r['recipe_b']}-{r['recipe_a']}/interaction"
        checks[key] = {k: r[k] for k in ("estimate", "low", "high", "verdict", "n_runs")}
    return ("\n### Mode × recipe interaction\n\n"
            f"Does a mode's difference from {reference} depend on the recipe? Per pair of recipes, paired "
            "on (seed, fold cell, clip), with the design model's interval, the same margin and verdicts "
            "(one Holm family per model and pair; better: the mode gains more under the second recipe).\n\n"
            + "\n".join(evaluation.interaction_lines(table)) + "\n")


def diagnostics_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean weight change and mean CKA per (model, recipe, freeze_mode, part) over the runs that
    logged them (``weight_change.<part>`` / ``cka.<block>`` columns of ``collect``), parts in forward
    order; ``n_runs`` counts the runs behind each mean. Empty when no run has diagnostics."""
    columns = ["model", "recipe", "freeze_mode", "part", "weight_change", "cka", "n_runs"]
    metric_cols = [c for c in runs.columns if c.split(".", 1)[0] in DIAGNOSTICS]
    if not metric_cols:
        return pd.DataFrame(columns=columns)
    keys = ["model", "recipe", "freeze_mode"]
    table = runs.copy()
    table["recipe"] = table["recipe"].fillna("fixed") if "recipe" in table else "fixed"
    long = table.melt(id_vars=keys, value_vars=metric_cols, var_name="metric").dropna(subset=["value"])
    if long.empty:
        return pd.DataFrame(columns=columns)
    long[["kind", "part"]] = long["metric"].str.split(".", n=1, expand=True)
    # the runs behind a part: those with its weight change (every diagnosed run logs one)
    index = keys + ["part"]
    counts = long[long["kind"] == "weight_change"].groupby(index, sort=False).size().rename("n_runs")
    means = long.pivot_table(index=index, columns="kind", values="value", aggfunc="mean", sort=False)
    out = means.reindex(columns=list(DIAGNOSTICS)).join(counts).reset_index()
    out["n_runs"] = out["n_runs"].fillna(0).astype(int)
    order = {m: i for i, m in enumerate(pd.unique(runs["freeze_mode"]))}
    out["_mode"] = out["freeze_mode"].map(order)
    out["_part"] = out["part"].map(diagnostics.part_order)
    out = out.sort_values(["model", "recipe", "_mode", "_part"], kind="stable")
    return out.drop(columns=["_mode", "_part"])[columns].reset_index(drop=True)


def _write_diagnostics(runs: pd.DataFrame, out: Path) -> str:
    """The per-mode diagnostics CSV and figure under ``out``; returns the Markdown section."""
    table = diagnostics_summary(runs)
    atomic.write_text(out / NAMES["diagnostics"], table.to_csv(index=False))
    title = "\n### Why: weight change and representation change per block\n\n"
    if table.empty:
        figures.plot_message("no diagnostics: these runs logged no weight change or CKA "
                             "(trained before train/diagnostics.py)", out / NAMES["diagnostics_png"])
        return title + "No diagnostics: the compared runs logged no weight change or CKA.\n"
    figures.plot_diagnostics(table, out / NAMES["diagnostics_png"])
    lines = [title.rstrip("\n"), ""]
    for (model, source), group in table.groupby(["model", "recipe"], sort=False):
        label = model if set(table["recipe"]) == {"fixed"} else f"{model} ({source})"
        for kind, what, fmt in (("weight_change", "relative weight change ‖θ − θ₀‖ / ‖θ₀‖", "{:.3g}"),
                                ("cka", "CKA (initial, fine-tuned)", "{:.3f}")):
            wide = group.pivot_table(index="freeze_mode", columns="part", values=kind, sort=False)
            if wide.empty:
                continue
            wide = wide.reindex(columns=sorted(wide.columns, key=diagnostics.part_order))
            runs_per_mode = group.groupby("freeze_mode", sort=False)["n_runs"].max()
            wide.insert(0, "runs", runs_per_mode.reindex(wide.index).astype(int).astype(str))
            shown = wide.map(lambda v, f=fmt: v if isinstance(v, str) else "–" if pd.isna(v) else f.format(v))
            lines += [f"**{label}: {what}**, mean over runs", "",
                      shown.reset_index().rename(columns={"freeze_mode": "freeze mode"}).to_markdown(
                          index=False, disable_numparse=True), ""]
    missing = runs.loc[runs.filter(like="weight_change.").isna().all(axis=1)] if any(
        c.startswith("weight_change.") for c in runs.columns) else runs
    if len(missing):
        lines.append(f"{len(missing)} run(s) logged no diagnostics (trained before train/diagnostics.py); "
                     "the means are over the others.")
    lines.append("Weight change: over each part's weights (stem, every block, tail, head); 0 = frozen. "
                 "CKA: unbiased linear CKA between the initial and the fine-tuned model's block outputs on "
                 "a fixed sample of test clips (ViT: class token; ResNet: pooled stage output); see "
                 "train/diagnostics.py.")
    return "\n".join(lines) + "\n"


def _checks_markdown(checks: dict) -> str:
    """The study-level checks under the main table: val-vs-test agreement, the original's headline."""
    lines = []
    for key, value in checks.items():
        if key.endswith("/val_vs_test"):
            lines.append(f"- {evaluation.agreement_line(key.removesuffix('/val_vs_test'), value)}")
        elif key.endswith("/headline"):
            lines.append(f"- {key.removesuffix('/headline')}: the original's headline (freeze_patch below "
                         f"freeze_none and freeze_patch_0_5 above freeze_patch), joint one-sided test on the "
                         f"design model over {value['n_runs']} paired runs: p = {stats.fmt_p(value['p'])}")
    return "\n" + "\n".join(lines) + "\n" if lines else ""


def budget_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The strategies ranked by mean test accuracy within each trainable-share budget (``BUDGETS``),
    per comparison group (model, condition, recipe): family, share, accuracy, the difference to the
    reference with its interval (the crossed one when per-clip predictions were compared), the
    verdict, and whether the mode is on the Pareto frontier of its group (``figures.pareto``).
    Empty without shares."""
    if "trainable_share" not in summary or summary["trainable_share"].isna().all():
        return pd.DataFrame()
    keys = [k for k in stats.group_keys(summary) if k in summary.columns]
    rows = []
    for _, group in summary.groupby(keys, sort=False, dropna=False):
        on_front = figures.pareto(group["trainable_share"], group["test_mean"])
        front = dict(zip(group.index, on_front, strict=True))
        for budget, label in BUDGETS:
            inside = group[group["trainable_share"] <= budget * (1 + 1e-9)]
            for rank, (i, r) in enumerate(inside.sort_values("test_mean", ascending=False).iterrows(), 1):
                ref = r["freeze_mode"] == r["reference_mode"]
                rows.append({"budget": label, "rank": rank, **{k: r[k] for k in keys},
                             "freeze mode": r["freeze_mode"], "family": _family(r["model"], r["freeze_mode"]),
                             "trainable share": stats._percent(r["trainable_share"]),
                             "test acc %": f"{r['test_mean']:.1f}",
                             "Δ test (pp) [CI]": "reference" if ref else stats._delta(
                                 r.get("estimate", math.nan), r.get("low", math.nan), r.get("high", math.nan),
                                 r.get("note")),
                             "verdict": "–" if ref or pd.isna(r.get("verdict", math.nan)) else r["verdict"],
                             "Pareto": "yes" if front[i] else ""})
    return pd.DataFrame(rows)


def budget_markdown(summary: pd.DataFrame) -> str:
    """``budget_table`` as a Markdown section ('' when the runs carry no trainable share)."""
    table = budget_table(summary)
    if table.empty:
        return ""
    return ("\n### Within a trainable-share budget\n\nStrategies ranked by mean test accuracy among those "
            "training at most the budget's share of the model's parameters; Pareto: no strategy trains "
            "less and scores higher.\n\n" + table.to_markdown(index=False, disable_numparse=True) + "\n")


def _family(model: str, mode: str) -> str:
    """The freeze family of ``mode`` ('' for a model or mode outside the registry)."""
    try:
        return freezing.family_of(model, mode)
    except UserError:
        return ""


def _baseline_markdown(summary: pd.DataFrame, floor: pd.DataFrame) -> str:
    mean = floor["test_acc"].mean()
    sd = floor["test_acc"].std(ddof=1) if len(floor) > 1 else float("nan")
    spread = "" if pd.isna(sd) else f" ± {sd:.1f}"
    best = summary.loc[summary["test_mean"].idxmax()]
    return (f"\n**Floor to beat:** logistic regression on per-mel-band statistics (study/baseline.py), "
            f"trained and scored on the same {len(floor)} cell(s) and clips: test acc {mean:.1f}{spread} %. "
            f"Best deep mode: {best['model']} {best['freeze_mode']} ({best['recipe']}) "
            f"{best['test_mean']:.1f} % "
            f"({best['test_mean'] - mean:+.1f} pp against the floor).\n")


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


STATS_KEYS = ("n", "test_mean", "test_std", "ci_low", "ci_high", "val_mean", "diff_vs_ref",
              *stats.TEST_COLUMNS,
              "estimate", "low", "high", "se", "dof", "p_different", "p_equivalent", "p_different_holm",
              "p_equivalent_holm", "verdict", "mdd", "n_runs", "n_cells", "n_clips", "design", "note",
              "sd_clip_effect", "val_estimate", f"ci_low_{evaluation.NB}", f"ci_high_{evaluation.NB}",
              f"pvalue_{evaluation.NB}")


def _stats_json(summary: pd.DataFrame, checks: dict | None = None) -> dict:
    tree: dict = {}
    for row in summary.to_dict("records"):
        key = f"{row['model']}/" + (f"{row['condition']}/" if "condition" in row else "") + \
            f"{row['freeze_mode']}" + (
            f"/{row['recipe']}" if row.get("recipe", "fixed") != "fixed" else "")
        tree[key] = _clean({k: v for k, v in row.items() if k in STATS_KEYS})
    if checks:
        tree["checks"] = _clean(checks)
    return tree


def from_pipeline(p: Params) -> pd.DataFrame:
    """The compare stage's entry point."""
    c = CompareConfig.from_params(p)
    runs = collect(c)
    preds = predictions(c, runs)
    clips = {split: evaluation.clip_table(preds, split) for split in ("test", "val")}
    floor = baseline_rows(c, runs)
    summary = write_outputs(runs, c.out, c.reference, c.confidence, clips, c.margin, c.folds, floor)
    _log_summary_run(c, runs)
    print((c.out / NAMES["md"]).read_text())
    return summary


def plan(p: Params, effect: float, csvs: list[str] | None = None) -> list[str]:
    """``tfreeze compare --plan EFFECT``: runs (and cells) needed to detect ``effect`` pp and to show
    equivalence at the margin, per mode, from the measured variance components."""
    c = CompareConfig.from_params(p)
    if csvs:
        runs = stats.validate_runs(pd.concat([stats.read_runs_csv(x) for x in csvs], ignore_index=True))
        lines = evaluation.plan_lines_from_runs(runs, c.reference, effect, margin=c.margin)
    else:
        runs = collect_local(c)
        test = evaluation.clip_table(predictions(c, runs), "test")
        lines = evaluation.plan_lines(test, c.reference, effect, margin=c.margin)
    for line in lines:
        print(line)
    return lines


def collect_local(c: CompareConfig) -> pd.DataFrame:
    """The grid's runs as far as their run folders tell (no MLflow needed): for planning."""
    rows = []
    for model, freeze, seed, cell, recipe in c.cells:
        folder = train_stage.run_dir(c.models_out, model, freeze, seed, cell, recipe)
        if not (folder / train_stage.PREDICTIONS).is_file():
            continue
        repeat, fold = c.repeat_fold(cell)
        rows.append({"model": model, "freeze_mode": freeze, "seed": seed, "fold": fold, "repeat": repeat,
                     "cell": cell, "recipe": recipe})
    if not rows:
        raise UserError(f"no run of the grid has {train_stage.PREDICTIONS} under {c.models_out}; run the "
                        "study first, or pass --from-csv to plan from a per-seed table")
    return pd.DataFrame(rows)


def from_csv(p: Params, csvs: list[str], out: str | None = None,
             labels: list[str] | None = None) -> pd.DataFrame:
    """Summarise per-seed CSVs together, e.g. a fixed-lr and a tuned-lr study side by side.

    Each CSV's runs belong to a training condition (``condition_of``); with more than one the
    table gains a condition column (each condition its own group) and the reference mode under
    each condition is contrasted with the first condition's (``stats.condition_contrast``).
    """
    c = p["compare"]
    if labels and len(labels) != len(csvs):
        raise UserError(f"--label given {len(labels)} time(s) for {len(csvs)} CSV(s); "
                        "give one label per CSV, in the same order, or none")
    runs = pd.concat([condition_of(stats.read_runs_csv(csv), labels[i] if labels else None)
                      for i, csv in enumerate(csvs)], ignore_index=True)
    if runs[stats.CONDITION].nunique() == 1:
        runs = runs.drop(columns=stats.CONDITION)
    folder = Path(out or c["out"])
    summary = write_outputs(runs, folder, c["reference_mode"], c["confidence"],
                            margin=c["equivalence_margin"])
    print(stats.to_markdown(summary, c["equivalence_margin"]))
    for line in evaluation.val_test_from_runs(stats.validate_runs(runs), c["reference_mode"]):
        print(line)
    contrast = stats.condition_contrast(runs, c["reference_mode"], c["confidence"])
    if len(contrast):
        lines = stats.contrast_lines(contrast, c["confidence"])
        for line in lines:
            print(line)
        text = (folder / NAMES["md"]).read_text()
        atomic.write_text(folder / NAMES["md"], text + "\n## Conditions\n\n"
                          + "".join(f"- {line}\n" for line in lines))
        atomic.write_text(folder / NAMES["conditions"], contrast.to_csv(index=False))
    return summary


AUGMENTED_SUFFIX = "_aug"  # the original named its augmented runs' model vit_b_16_aug


def condition_of(runs: pd.DataFrame, label: str | None = None) -> pd.DataFrame:
    """``runs`` with a ``condition`` column: ``label`` if given, else the CSV's own ``condition``
    column, else ``augmented`` for a model named ``<model>_aug`` and ``plain`` otherwise. The
    ``_aug`` suffix (the original's naming) is removed from model names either way, so both
    conditions of one model line up."""
    out = runs.copy()
    augmented = out["model"].astype(str).str.endswith(AUGMENTED_SUFFIX)
    if label:
        out[stats.CONDITION] = label
    elif stats.CONDITION not in out.columns:
        out[stats.CONDITION] = augmented.map({True: "augmented", False: "plain"})
    out.loc[augmented, "model"] = out.loc[augmented, "model"].str.removesuffix(AUGMENTED_SUFFIX)
    return out


def _log_summary_run(c: CompareConfig, runs: pd.DataFrame) -> None:
    tracking.connect(c.tracking)
    tags = {"kind": "freezing_comparison", **tracking.git_tags()}
    with tracking.run("compare/freezing", tags=tags):
        tracking.log_params({"compare.reference_mode": c.reference, "compare.confidence": c.confidence,
                             "compare.equivalence_margin": c.margin, "n_runs": len(runs)})
        for name in NAMES.values():
            if (c.out / name).is_file():
                tracking.log_artifact(c.out / name, "comparison")

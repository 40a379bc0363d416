"""Forest plot (differences vs the reference mode) and depth plot (accuracy vs trainable share)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from transfer_freezing.errors import UserError
from transfer_freezing.study.figures import (
    depth_figure,
    forest_figure,
    forest_rows,
    plot_depth,
    plot_forest,
)

REPO = Path(__file__).resolve().parents[1]

MODES = ["freeze_none", "freeze_patch", "freeze_patch_0_5", "freeze_patch_0_11"]
SHARES = {"freeze_none": 1.0, "freeze_patch": 0.99, "freeze_patch_0_5": 0.4957, "freeze_patch_0_11": 0.002}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 10_000


def _effects(models: tuple[str, ...] = ("vit", "cnn"), recipe: str | None = None) -> pd.DataFrame:
    """One row per (model, mode); the reference row has a NaN interval like the stats output."""
    spec = {  # mode: (estimate, low, high, verdict)
        "freeze_none": (0.0, math.nan, math.nan, math.nan),
        "freeze_patch": (-0.2, -0.8, 0.4, "equivalent"),
        "freeze_patch_0_5": (1.6, 0.4, 2.8, "better"),
        "freeze_patch_0_11": (-8.5, -10.1, -6.9, "worse"),
    }
    rows = [
        {
            "model": model,
            "freeze_mode": mode,
            "reference_mode": "freeze_none",
            "estimate": est,
            "low": low,
            "high": high,
            "verdict": verdict,
        }
        for model in models
        for mode, (est, low, high, verdict) in spec.items()
    ]
    effects = pd.DataFrame(rows)
    if recipe is not None:
        effects["recipe"] = recipe
    return effects


def _runs(models: tuple[str, ...] = ("vit", "cnn"), seeds: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    base = {"freeze_none": 72.0, "freeze_patch": 71.5, "freeze_patch_0_5": 73.0, "freeze_patch_0_11": 63.0}
    rows = [
        {
            "model": model,
            "freeze_mode": mode,
            "seed": seed,
            "trainable_share": SHARES[mode],
            "test_acc": base[mode] - 4.0 * m + rng.normal(0, 1.5),
        }
        for m, model in enumerate(models)
        for mode in MODES
        for seed in range(1, seeds + 1)
    ]
    return pd.DataFrame(rows)


def _one_line_user_error(excinfo: pytest.ExceptionInfo[UserError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert path.stat().st_size > MIN_PNG_BYTES
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporaries left


# --- forest plot ---------------------------------------------------------------------------------


def test_forest_writes_png(tmp_path: Path) -> None:
    path = tmp_path / "reports" / "forest.png"

    plot_forest(_effects(), 1.0, path, title="Freeze modes vs full fine-tuning")

    _assert_png(path)


def test_forest_rows_skip_the_reference_and_group_by_model() -> None:
    rows = forest_rows(_effects())

    assert rows["label"].tolist() == [
        "vit",
        "freeze_patch",
        "freeze_patch_0_5",
        "freeze_patch_0_11",
        "cnn",
        "freeze_patch",
        "freeze_patch_0_5",
        "freeze_patch_0_11",
    ]
    assert rows["y"].tolist() == list(range(8))
    assert rows["verdict"].isna().tolist() == [True, False, False, False] * 2  # model headers
    assert rows.loc[rows["label"] == "freeze_patch_0_11", "low"].tolist() == [-10.1, -10.1]


def test_forest_single_model_has_no_header_and_skips_every_nan_row() -> None:
    effects = _effects(models=("vit",))
    effects.loc[effects["freeze_mode"] == "freeze_patch", "high"] = math.nan

    rows = forest_rows(effects)

    assert rows["label"].tolist() == ["freeze_patch_0_5", "freeze_patch_0_11"]
    assert rows["verdict"].tolist() == ["better", "worse"]


def test_forest_figure_draws_band_zero_line_rows_and_legend() -> None:
    margin = 1.5
    fig = forest_figure(_effects(), margin)
    ax = fig.axes[0]

    assert isinstance(fig, Figure)
    assert [t.get_text() for t in ax.get_yticklabels()] == forest_rows(_effects())["label"].tolist()
    bold = [t.get_text() for t in ax.get_yticklabels() if t.get_fontweight() == "bold"]
    assert bold == ["vit", "cnn"]
    (band,) = [p for p in ax.patches if p.get_gid() == "equivalence_band"]
    assert band.get_x() == pytest.approx(-margin)
    assert band.get_x() + band.get_width() == pytest.approx(margin)
    assert any(list(line.get_xdata()) == [0.0, 0.0] for line in ax.get_lines())  # zero line
    assert ax.get_xlabel() == "difference vs freeze_none (pp)"
    assert ax.get_xlim()[0] < -10.1 and ax.get_xlim()[1] > margin

    # one interval per drawn comparison, at its row, from low to high
    (intervals,) = ax.collections[:1]
    segments = sorted((float(s[0][1]), float(s[0][0]), float(s[1][0])) for s in intervals.get_segments())
    assert segments == [
        (1.0, -0.8, 0.4),
        (2.0, 0.4, 2.8),
        (3.0, -10.1, -6.9),
        (5.0, -0.8, 0.4),
        (6.0, 0.4, 2.8),
        (7.0, -10.1, -6.9),
    ]
    # one point series per verdict present, at the estimates of that verdict's rows
    points = {c.get_label(): c.get_offsets().tolist() for c in ax.collections[1:]}
    assert points == {
        "better": [[1.6, 2.0], [1.6, 6.0]],
        "worse": [[-8.5, 3.0], [-8.5, 7.0]],
        "equivalent": [[-0.2, 1.0], [-0.2, 5.0]],
    }
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["equivalence band ±1.5 pp", "better", "worse",
                                                           "equivalent"]
    fig.canvas.draw()  # the legend sits under the axes and their label, over no interval
    axes = ax.get_tightbbox(fig.canvas.get_renderer())
    assert legend.get_window_extent().y1 <= axes.y0 + 1


def test_forest_labels_carry_recipe_only_when_not_all_fixed() -> None:
    fixed = forest_rows(_effects(models=("vit",), recipe="fixed"))
    mixed = pd.concat([_effects(models=("vit",), recipe="fixed"), _effects(("vit",), "sweep")])

    assert fixed["label"].tolist() == ["freeze_patch", "freeze_patch_0_5", "freeze_patch_0_11"]
    assert forest_rows(mixed)["label"].tolist() == [
        "freeze_patch (fixed)",
        "freeze_patch_0_5 (fixed)",
        "freeze_patch_0_11 (fixed)",
        "freeze_patch (sweep)",
        "freeze_patch_0_5 (sweep)",
        "freeze_patch_0_11 (sweep)",
    ]


def test_forest_xlabel_without_reference_column_and_with_title() -> None:
    fig = forest_figure(_effects().drop(columns="reference_mode"), 1.0, title="Forest")

    assert fig.axes[0].get_xlabel() == "difference vs reference (pp)"
    assert fig.get_suptitle() == "Forest"


def test_the_forest_title_fits_in_the_figure() -> None:
    """The compare stage's title is long and the row labels wide: all of it is drawn."""
    title = "mode \u2212 reference: difference and interval (design model)"
    committed = pd.read_csv(REPO / "reports/freezing_comparison.csv")  # the demo's own rows
    fig = forest_figure(committed, 1.0, title=title)
    fig.canvas.draw()
    box = fig.texts[0].get_window_extent()
    assert fig.texts[0].get_text() == title
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def _forest_case(name: str) -> pd.DataFrame:
    effects = _effects()
    if name == "empty":
        return effects.iloc[0:0]
    if name == "missing_column":
        return effects.drop(columns="verdict")
    if name == "only_nan_intervals":
        return effects[effects["freeze_mode"] == "freeze_none"]
    if name == "unknown_verdict":
        effects.loc[1, "verdict"] = "maybe"
        return effects
    if name == "low_above_high":
        effects.loc[1, ["low", "high"]] = [2.0, 1.0]
        return effects
    if name == "non_numeric":
        effects["estimate"] = effects["estimate"].astype(object)
        effects.loc[1, "estimate"] = "big"
        return effects
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("case", "margin", "fragment"),
    [
        ("empty", 1.0, "empty"),
        ("missing_column", 1.0, "lacks column(s) verdict"),
        ("only_nan_intervals", 1.0, "no comparison with an interval"),
        ("unknown_verdict", 1.0, "verdict 'maybe'"),
        ("low_above_high", 1.0, "low > high"),
        ("non_numeric", 1.0, "non-numeric value: 'big'"),
        ("ok", 0.0, "margin"),
        ("ok", math.nan, "margin"),
        ("ok", "wide", "margin"),
    ],
)
def test_forest_bad_input_is_a_one_line_user_error_and_writes_nothing(
    tmp_path: Path, case: str, margin: float, fragment: str
) -> None:
    effects = _effects() if case == "ok" else _forest_case(case)
    path = tmp_path / "out" / "forest.png"

    with pytest.raises(UserError) as excinfo:
        plot_forest(effects, margin, path)

    assert fragment in _one_line_user_error(excinfo)
    assert list(tmp_path.iterdir()) == []


# --- depth plot ----------------------------------------------------------------------------------


def test_depth_writes_png(tmp_path: Path) -> None:
    path = tmp_path / "depth.png"

    plot_depth(_runs(), path)

    _assert_png(path)


def test_depth_figure_draws_runs_means_and_mode_labels() -> None:
    runs = _runs()
    fig = depth_figure(runs)
    ax = fig.axes[0]

    assert ax.get_xscale() == "log"
    assert ax.get_ylabel() == "Test accuracy (%)"
    assert "%" in ax.get_xlabel()
    assert ax.xaxis.get_major_formatter()(10.0, 0) == "10%"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"vit", "cnn"}
    for model, line in lines.items():
        sub = runs[runs["model"] == model]
        expected = sub.groupby("freeze_mode")["test_acc"].mean()
        order = sorted(MODES, key=SHARES.get)  # the line runs from the smallest share up
        np.testing.assert_allclose(line.get_xdata(), [SHARES[m] * 100 for m in order])
        np.testing.assert_allclose(line.get_ydata(), expected[order].to_numpy())
    lines = ("depth_band", "pareto_front", "pareto_point")
    scatters = [c for c in ax.collections if c.get_gid() not in lines]
    assert [len(c.get_offsets()) for c in scatters] == [16, 16]  # every run is a point
    for c in scatters:
        x = c.get_offsets()[:, 0]
        assert np.all((x > 0.19) & (x < 103))  # jitter stays close to the run's share (in %)
    labels = [t for t in ax.texts if t.get_gid() == "mode_label"]
    assert sorted(t.get_text() for t in labels) == sorted(MODES * 2)
    # freeze_none (100 %) and freeze_patch (99 %) nearly coincide: their labels are stacked
    near = {(t.get_color(), t.xyann) for t in labels if t.get_text() in {"freeze_none", "freeze_patch"}}
    assert len(near) == 4
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["vit", "cnn"]


def test_depth_band_is_the_t_interval_of_each_mean() -> None:
    runs = _runs(("vit",))
    (band,) = [c for c in depth_figure(runs).axes[0].collections if c.get_gid() == "depth_band"]
    y = band.get_paths()[0].vertices[:, 1]
    acc = runs.groupby("freeze_mode")["test_acc"]
    half = 3.182446305284263 * acc.std(ddof=1) / 2  # t(0.975, 3) * sd / sqrt(4 runs)
    assert y.max() == pytest.approx((acc.mean() + half).max())
    assert y.min() == pytest.approx((acc.mean() - half).min())


def test_depth_y_axis_shows_the_runs_inside_0_to_100_not_a_two_run_band() -> None:
    # Two runs 30 points apart: t(0.975, 1) * sd / sqrt(2) puts the band near -170 .. +230 %.
    rows = [{"model": "vit", "freeze_mode": mode, "seed": s, "trainable_share": share,
             "test_acc": acc + 30 * s} for s in range(2)
            for mode, share, acc in (("freeze_none", 1.0, 40.0), ("freeze_patch_0_11", 0.001, 20.0))]
    ax = depth_figure(pd.DataFrame(rows)).axes[0]
    (band,) = [c for c in ax.collections if c.get_gid() == "depth_band"]
    assert band.get_paths()[0].vertices[:, 1].min() < -100  # the band itself is the true interval
    assert ax.get_ylim() == pytest.approx((12.0, 78.0))  # 20 .. 70 % with an 8-point margin
    assert "cut at the axes" in ax.get_title()


def test_depth_draws_both_architectures_and_keeps_other_strategies_off_the_curve() -> None:
    rows = []
    shares = {"vit_demo": {"freeze_none": 1.0, "freeze_patch_0_5": 0.5, "bitfit": 0.01},
              "resnet_demo": {"freeze_none": 1.0, "freeze_0_1": 0.9, "freeze_0_1_2_3_4": 0.001}}
    for model, modes in shares.items():
        for mode, share in modes.items():
            rows += [{"model": model, "freeze_mode": mode, "seed": s, "trainable_share": share,
                      "test_acc": 50.0 + s} for s in range(3)]
    ax = depth_figure(pd.DataFrame(rows)).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"vit_demo", "resnet_demo"}
    np.testing.assert_allclose(lines["vit_demo"].get_xdata(), [50.0, 100.0])  # bitfit is not a depth
    np.testing.assert_allclose(lines["resnet_demo"].get_xdata(), [0.1, 90.0, 100.0])
    assert len([c for c in ax.collections if c.get_gid() == "depth_band"]) == 2
    assert "bitfit" in [t.get_text() for t in ax.texts if t.get_gid() == "mode_label"]


def test_depth_splits_series_by_recipe_when_several() -> None:
    runs = pd.concat([_runs(("vit",)).assign(recipe="fixed"), _runs(("vit",)).assign(recipe="sweep")])

    fig = depth_figure(runs)

    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["vit (fixed)", "vit (sweep)"]


def _depth_case(name: str) -> pd.DataFrame:
    runs = _runs()
    if name == "empty":
        return runs.iloc[0:0]
    if name == "missing_column":
        return runs.drop(columns="trainable_share")
    if name == "zero_share":
        runs.loc[0, "trainable_share"] = 0.0
        return runs
    if name == "percent_share":
        runs.loc[0, "trainable_share"] = 49.57
        return runs
    if name == "non_numeric":
        runs["test_acc"] = runs["test_acc"].astype(object)
        runs.loc[0, "test_acc"] = "n/a"
        return runs
    if name == "all_nan":
        return runs.assign(test_acc=math.nan)
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("empty", "empty"),
        ("missing_column", "lacks column(s) trainable_share"),
        ("zero_share", "fraction in (0, 1]"),
        ("percent_share", "fraction in (0, 1]"),
        ("non_numeric", "non-numeric value: 'n/a'"),
        ("all_nan", "no run with both"),
    ],
)
def test_depth_bad_input_is_a_one_line_user_error_and_writes_nothing(
    tmp_path: Path, case: str, fragment: str
) -> None:
    path = tmp_path / "out" / "depth.png"

    with pytest.raises(UserError) as excinfo:
        plot_depth(_depth_case(case), path)

    assert fragment in _one_line_user_error(excinfo)
    assert list(tmp_path.iterdir()) == []


# --- atomic writes -------------------------------------------------------------------------------


@pytest.mark.parametrize("plot", ["forest", "depth"])
def test_failed_save_leaves_previous_file_and_no_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plot: str
) -> None:
    path = tmp_path / "fig.png"
    path.write_bytes(b"previous")

    def broken_savefig(self: Figure, fname: Path, **kwargs: object) -> None:
        Path(fname).write_bytes(b"half a png")
        raise OSError("simulated failure while writing")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="simulated"):
        if plot == "forest":
            plot_forest(_effects(), 1.0, path)
        else:
            plot_depth(_runs(), path)

    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]

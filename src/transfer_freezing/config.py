"""Read params.yaml, apply ``--set`` overrides and validate every key in one place."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .errors import UserError, first_line

Params = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """What a key allows: a predicate and the words used when it fails (``distinct``: a list whose
    items must differ, since each item is a grid axis value and a repeat would run a cell twice)."""

    allowed: str
    check: Callable[[Any], bool]
    distinct: bool = False


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def positive_int() -> Rule:
    return Rule("an integer >= 1", lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 1)


def non_negative_int() -> Rule:
    return Rule("an integer >= 0", lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 0)


def int_range(low: int, high: int, why: str) -> Rule:
    """An integer in ``low .. high``; ``why`` says where the upper bound comes from."""
    return Rule(f"an integer in {low} .. {high:,} ({why})",
                lambda x: isinstance(x, int) and not isinstance(x, bool) and low <= x <= high)


def positive_float() -> Rule:
    return Rule("a number > 0", lambda x: _num(x) and x > 0)


def non_negative_float() -> Rule:
    return Rule("a number >= 0", lambda x: _num(x) and x >= 0)


def fraction() -> Rule:
    return Rule("a number in (0, 1]", lambda x: _num(x) and 0 < x <= 1)


def choice(*options: Any) -> Rule:
    return Rule("one of " + ", ".join(map(str, options)), lambda x: x in options)


def text() -> Rule:
    return Rule("a non-empty string", lambda x: isinstance(x, str) and x != "")


def optional_text() -> Rule:
    return Rule("a string or null", lambda x: x is None or isinstance(x, str))


def boolean() -> Rule:
    return Rule("true or false", lambda x: isinstance(x, bool))


def non_empty_list(item: Rule) -> Rule:
    """A non-empty list of distinct items (a grid axis)."""
    return Rule(
        f"a non-empty list, each item {item.allowed}",
        lambda x: isinstance(x, list) and len(x) > 0 and all(item.check(i) for i in x),
        distinct=True,
    )


def any_list(item: Rule) -> Rule:
    """A list, possibly empty, of distinct items (a grid axis)."""
    return Rule(
        f"a list (may be empty), each item {item.allowed}",
        lambda x: isinstance(x, list) and all(item.check(i) for i in x),
        distinct=True,
    )


def repeated(items: list) -> list:
    """The items of ``items`` that occur more than once, each once, in order of first occurrence."""
    seen: list = []
    return [i for n, i in enumerate(items) if i in items[:n] and not (i in seen or seen.append(i))]


# Sizes that grow memory with no use beyond these bounds (see ``_check_sizes``).
MAX_IMAGE_SIZE = 1024  # GTZAN's 1,000 clips at 1024 x 1024 float16: 2 GiB, held whole by every run
MAX_CLIP_SECONDS = 600.0  # one clip is decoded and transformed whole; GTZAN's are 30 s
MAX_SAMPLE_RATE = 192_000  # the highest common audio rate
MAX_SYNTHETIC_CLIPS = 10_000  # per class: 100x GTZAN's 100
MAX_REPEATS = 100  # the fold table has split.repeats rows per clip
MAX_FEATURE_WORKERS = 256  # processes
MAX_STFT_BYTES = 1 << 30  # one clip's complex STFT (n_fft/2 + 1 bins x frames x 8 bytes): GTZAN's is 10.6 MB


# Keys (value None: any value) and values that once meant something else: the one line that says
# what to write instead.
RETIRED: dict[tuple[str, str | None], str] = {
    ("train.lr", "sweep"): "train.lr = 'sweep' is retired: tuned-lr cells are their own stage "
                           "(train_tuned, over grid.tuned_models x grid.tuned_freeze_modes, reading each "
                           "sweep's best lr) next to the fixed-lr ones; give train.lr a number",
    ("sweep.seed", None): "sweep.seed is now sweep.seeds: a list of training seeds for the trials, "
                          "disjoint from grid.seeds (e.g. sweep.seeds: [101, 102])",
}


# Keys that moved when params were grouped by role (grid: which cells exist; train: the recipe;
# keep: what is stored; runtime: how it runs): old key -> new key, named in one line.
MOVED: dict[str, str] = {
    "train.models": "grid.models", "train.freeze_modes": "grid.freeze_modes", "train.cells": "grid.cells",
    "train.seeds": "grid.seeds", "train.folds": "grid.folds",
    "sweep.models": "grid.tuned_models", "sweep.freeze_modes": "grid.tuned_freeze_modes",
    "train.keep_weights": "keep.weights",
    "train.device": "runtime.device", "train.compile": "runtime.compile",
    "train.checkpoint_seconds": "runtime.checkpoint_seconds", "train.cpus_per_run": "runtime.cpus_per_run",
    "train.gpus_per_run": "runtime.gpus_per_run", "features.workers": "runtime.feature_workers",
    "sweep.heartbeat_seconds": "runtime.sweep_heartbeat_seconds",
}


TUNED = "tuned"  # a recipe's ``lr`` that takes the lr from its sweep (its cells are the tuned-lr grid)
RECIPE_LOCATIONS = ("out",)  # train keys that say where outputs go, not what they hold: no recipe sets them
RECIPE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.]*")  # a folder name and a DVC matrix value


class Setting(NamedTuple):
    """One key of params.yaml: its default, what it allows and what it means (``doc``: the comment
    ``tfreeze profile`` writes next to it in params.yaml and docs/params.md shows)."""

    default: Any
    rule: Rule
    doc: str = ""


S = Setting
# Every key params.yaml may hold, its default and what it allows. The defaults are the study's
# recipe on the offline-safe inputs (the synthetic corpus, no pretrained weights) with a one-cell
# grid; each profile (profiles/*.yaml) holds only what it changes. Model and freeze-mode names are
# checked against their registries in ``validate``.
SCHEMA: dict[str, Setting] = {
    "data.source": S("synthetic", choice("synthetic", "gtzan", "folder"),
                     "synthetic (generated, GTZAN-shaped) | gtzan | folder (a folder per class)"),
    "data.path": S(None, optional_text(), "the audio tree for gtzan / folder"),
    "data.download": S(False, boolean(),
                       "gtzan only: fetch the tarball when path is missing (needs network)"),
    "data.out": S("data/raw", text()),
    "data.sample_rate": S(22050, int_range(1, MAX_SAMPLE_RATE, "the highest common audio rate")),
    "data.clip_seconds": S(30.0, Rule(f"a number in (0, {MAX_CLIP_SECONDS:g}] (a clip is decoded and "
                                         "transformed whole; GTZAN's are 30 s)",
                                         lambda x: _num(x) and 0 < x <= MAX_CLIP_SECONDS),
                           "GTZAN clips are 30 s"),
    "data.min_seconds": S(1.0, non_negative_float(), "shorter files are skipped (listed in the manifest)"),
    "data.synthetic_clips_per_class": S(100, int_range(1, MAX_SYNTHETIC_CLIPS, "100x GTZAN's 100 per class")),
    "data.synthetic_seed": S(0, non_negative_int()),
    "split.scheme": S("stratified", choice("stratified", "filtered", "kfold"),
                      "stratified | filtered (GTZAN's fault-filtered lists) | kfold"),
    "split.train": S(0.8, fraction()),
    "split.val": S(0.1, fraction()),
    "split.test": S(0.1, fraction()),
    "split.seed": S(1, non_negative_int(),
                    "one split for every training seed (k-fold: repeat r uses seed + r)"),
    "split.folds": S(10, Rule("an integer >= 3", lambda x: isinstance(x, int) and not isinstance(x, bool)
                             and x >= 3), "kfold: K folds; cell r*K + k tests fold k, validates on fold k+1"),
    "split.repeats": S(1, int_range(1, MAX_REPEATS, "the fold table holds one row per clip and repeat"),
                       "kfold: R re-partitions"),
    "split.groups": S(None, optional_text(),
                      "a CSV of clip_id,group (e.g. GTZAN's artists): a group stays in one part"),
    "split.out": S("data/split.csv", text()),
    "features.n_fft": S(2048, positive_int()),
    "features.hop_length": S(512, positive_int()),
    "features.n_mels": S(128, positive_int()),
    "features.compression": S("log1p", choice("log1p", "db"), "log1p (the original) | db"),
    "features.image_size": S(224, int_range(1, MAX_IMAGE_SIZE, "every run holds the feature arrays "
                                            "whole; they grow with its square: GTZAN at 1024 is 2 GiB")),
    "features.dtype": S("float16", choice("float16", "uint8"), "float16 | uint8"),
    "features.out": S("data/features", text()),
    # grid: which cells exist. The fixed-lr grid (an empty list turns it off), then the tuned-lr one.
    "grid.models": S(["vit_b_16"], any_list(text()),
                     "fixed-lr grid: models x freeze_modes (x recipes); [] turns it off"),
    "grid.freeze_modes": S(["freeze_none"], any_list(text())),
    # More fixed-lr cells outside that product, each "<model>/<mode>": one profile, per-model modes.
    # Repeats: _check_listed_cells names the cell.
    "grid.cells": S([], dataclasses.replace(any_list(text()), distinct=False),
                    'more fixed-lr cells outside models x freeze_modes: "<model>/<mode>"'),
    "grid.seeds": S([1], non_empty_list(non_negative_int())),
    "grid.folds": S([0], non_empty_list(non_negative_int()),
                    "training cells (kfold: 0 .. folds*repeats-1; one split: [0])"),
    # The swept (and tuned-lr trained) grid: an empty list (or grid.tuned_recipes) turns the sweep and
    # train_tuned off.
    "grid.tuned_models": S(["vit_b_16"], any_list(text()),
                           "swept and tuned-lr grid (x tuned_recipes; stages sweep, train_tuned); [] turns "
                           "both off"),
    "grid.tuned_freeze_modes": S(["freeze_none"], any_list(text())),
    # The recipes (names of ``recipes``) crossed with each grid: a recipe's lr decides its grid.
    "grid.recipes": S(["fixed"], any_list(text()),
                      "fixed-lr recipes, crossed with the fixed-lr grid (models x freeze_modes, cells)"),
    "grid.tuned_recipes": S(["tuned"], any_list(text()),
                            "tuned-lr recipes (lr: tuned), crossed with tuned_models x tuned_freeze_modes"),
    # train: the recipe, what decides a run's numbers (a new key here reaches RunConfig by its name).
    "train.weights": S("none", text(),
                       "none | imagenet (each model's default entry) | an entry's name (tfreeze models "
                       "lists them) | a state-dict file ({model}: the cell's model)"),
    "train.weights_path": S(None, optional_text(), "the file of the named entry, instead of its cache"),
    "train.epochs": S(20, positive_int()),
    "train.batch_size": S(32, positive_int()),
    "train.lr": S(1e-3, positive_float(),
                  "every recorded run of the original used 1e-3 (its README's 1e-4 is a typo)"),
    "train.momentum": S(0.9, non_negative_float()),
    "train.weight_decay": S(0.0, non_negative_float()),
    "train.frozen_bn": S("eval", choice("eval", "train"),
                         "eval: frozen BatchNorm stops its statistics | train: the original's behaviour"),
    "train.activation_cache": S(True, boolean()),
    "train.optimizer": S("sgd", choice("sgd", "adamw"),
                         "sgd (momentum, weight_decay) | adamw (weight_decay, default betas)"),
    "train.schedule": S("none", choice("none", "cosine"),
                        "none | cosine: per step, to 0 at the end of the last epoch"),
    "train.warmup_epochs": S(0, non_negative_int(),
                             "linear warm-up of the lr over this many epochs (per step), either schedule"),
    "train.augment": S(False, boolean(),
                       "the original's augmentation of training batches (on: activation cache off)"),
    "train.augment_time_shift": S(10, non_negative_int(),
                                  "circular shift along time, up to +- this many frames (0: off)"),
    "train.augment_freq_mask": S(20, non_negative_int(),
                                 "torchaudio FrequencyMasking(this): up to this-1 mel rows zeroed (0: off)"),
    "train.augment_time_mask": S(30, non_negative_int(),
                                 "torchaudio TimeMasking(this): up to this-1 frames zeroed (0: off)"),
    "train.label_smoothing": S(0.0, Rule("a number in [0, 1)", lambda x: _num(x) and 0 <= x < 1),
                               "label smoothing of the training loss (0: none); evaluation stays plain"),
    "train.clip_grad_norm": S(0.0, Rule("a number >= 0", lambda x: _num(x) and x >= 0),
                              "clip the gradients' global L2 norm to this before each optimiser step "
                              "(torch.nn.utils.clip_grad_norm_; 0: off)"),
    "train.layer_decay": S(1.0, Rule("a number in (0, 1]", lambda x: _num(x) and 0 < x <= 1),
                           "layer-wise lr decay: block i of d trains at lr * decay^(d - i), the stem at "
                           "lr * decay^(d + 1), the head at lr (ResNet: stages); 1: off"),
    "train.lp_epochs": S(0, non_negative_int(),
                         "LP-FT: the first lp_epochs train the head only, then the mode's set with a "
                         "fresh optimiser and schedule; 0: off"),
    "train.diagnostics_clips": S(256, non_negative_int(), "test clips for the per-block CKA in "
                                 "diagnostics.json (0: weight change only)"),
    "train.out": S("models", text()),
    # keep: storage policy. Which runs keep their trained weights in model.pt; the others keep a
    # record (train/checkpoint.py). It decides model.pt, not a run's numbers.
    # recipes: named deltas over ``train`` (the base recipe), each a mapping of train keys; a recipe
    # with ``lr: tuned`` trains at its sweep's best lr. ``_check_recipes`` validates them.
    "recipes": S({"fixed": {}, "tuned": {"lr": TUNED}}, Rule(
        "a mapping of recipe name -> {train key: value} (a delta over train)",
        lambda x: isinstance(x, dict) and all(v is None or isinstance(v, dict) for v in x.values())),
        "name -> delta over train; lr: tuned takes the lr from that recipe's sweep"),
    "keep.weights": S("all", choice("all", "first_seed", "none"),
                      "all | first_seed | none: which runs keep trained weights in model.pt"),
    # pretrain: the pretrain stage (train/pretrain.py) trains these models on FractalDB-style
    # fractals (data/fractals.py) at features.image_size; train.weights: <out>/{model}.pt loads them.
    "pretrain.models": S([], any_list(text()),
                         "models to pretrain on fractals ([]: the stage writes nothing)"),
    "pretrain.classes": S(16, int_range(2, 1000, "a class is one random IFS"), "fractal classes (IFS)"),
    "pretrain.images_per_class": S(32, int_range(8, 10_000, "every 8th is held out"),
                                   "instances per class (every 8th held out to score the source task)"),
    "pretrain.points": S(3000, int_range(100, 1_000_000, "chaos-game points per image"),
                         "chaos-game points per image"),
    "pretrain.epochs": S(8, positive_int()),
    "pretrain.batch_size": S(64, positive_int()),
    "pretrain.lr": S(3e-4, positive_float(), "AdamW, one-cycle schedule"),
    "pretrain.weight_decay": S(0.05, non_negative_float()),
    "pretrain.seed": S(0, non_negative_int(), "the fractals and the initialisation"),
    "pretrain.out": S("pretrain", text(), "<out>/<model>.pt per model, and pretrain.json"),
    "sweep.n_trials": S(20, positive_int()),
    "sweep.lr_low": S(1e-5, positive_float()),
    "sweep.lr_high": S(1e-1, positive_float()),
    "sweep.epochs": S(20, positive_int()),
    "sweep.seeds": S([101, 102], non_empty_list(non_negative_int()),
                     "the trials' training seeds: disjoint from grid.seeds (no trial is replayed)"),
    "sweep.folds": S([0], non_empty_list(non_negative_int()),
                     "the trials' fold cells; a trial's value is the mean best val acc over seeds x folds"),
    "sweep.sampler_seed": S(0, non_negative_int()),
    "sweep.pruner_warmup_epochs": S(3, non_negative_int()),
    "sweep.pruner_startup_trials": S(5, non_negative_int()),
    "sweep.storage": S("sqlite:///optuna.db", text()),
    "sweep.out": S("reports/sweep", text()),
    # runtime: how it runs, never what it computes; no stage lists these.
    "runtime.feature_workers": S(0, int_range(0, MAX_FEATURE_WORKERS, "processes; 0 = one per CPU"),
                          "0 = all cores"),
    "runtime.device": S("auto", choice("auto", "cpu", "cuda"), "auto | cpu | cuda"),
    "runtime.compile": S(False, boolean(), "torch.compile the model"),
    "runtime.checkpoint_seconds": S(60.0, non_negative_float(),
                                    "resumable state at most this often (and on SIGTERM); 0 = every epoch"),
    "runtime.cpus_per_run": S(1.0, positive_float(),
                              "Ray resources per run (train --jobs, sweep --workers): no effect on results"),
    "runtime.gpus_per_run": S(1.0, fraction(), "on GPU nodes; 0.25 packs four runs per GPU"),
    "runtime.sweep_heartbeat_seconds": S(60, positive_int(),
                                         "how often a sweep worker marks its trial alive (a stale one is "
                                         "retried)"),
    "tracking.uri": S("sqlite:///mlruns/mlflow.db", text()),
    "tracking.artifacts": S("mlruns/artifacts", text()),
    "tracking.experiment": S("transfer-freezing", text()),
    "compare.reference_mode": S("freeze_none", text()),
    "compare.confidence": S(0.95, fraction()),
    "compare.equivalence_margin": S(1.0, positive_float(),
                                    "pp: |difference| below this counts as no practical difference"),
    "compare.out": S("reports", text()),
}


def defaults() -> Params:
    """The full nested params tree with every default filled in."""
    tree: Params = {}
    for key, setting in SCHEMA.items():
        _set(tree, key, copy.deepcopy(setting.default))
    return tree


def load(path: str | Path = "params.yaml", overrides: Iterable[str] = ()) -> Params:
    """Load ``path``, apply ``key=value`` overrides (values parsed as YAML), validate, return."""
    import yaml  # here, not at the top: the training core reads the grid's names without it
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params file not found: {path} (pass --params FILE)")
    try:
        given = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({first_line(err)})") from err
    if not isinstance(given, dict):
        raise UserError(f"{path}: expected a mapping of sections, got {type(given).__name__}")
    flat = dict(_flatten(given))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected dotted.key=value")
        flat[key.strip()] = yaml.safe_load(raw)
    return validate(flat, source=str(path))


def validate(flat: dict[str, Any], source: str = "params") -> Params:
    """Check every key and value of a flat ``{dotted.key: value}`` map; return the nested tree."""
    tree = defaults()
    for key, value in flat.items():
        retired = RETIRED.get((key, value if isinstance(value, str) else None)) or RETIRED.get((key, None))
        if retired:
            raise UserError(f"{source}: {retired}")
        if key.startswith("recipes."):  # --set recipes.NAME={...} or recipes.NAME.KEY=value
            name, _, leaf = key.removeprefix("recipes.").partition(".")
            recipes = tree["recipes"]
            if leaf:
                recipes[name] = {**(recipes.get(name) or {}), leaf: value}
            else:
                recipes[name] = value
            continue
        if key in MOVED:
            raise UserError(f"{source}: {key} is now {MOVED[key]} (params are grouped by role: grid = "
                            "which cells exist, train = the recipe, keep = what is stored, runtime = how "
                            "it runs); rename it, or rewrite params.yaml with `tfreeze profile NAME`")
        if key not in SCHEMA:
            raise UserError(f"{source}: unknown key {key!r}{_did_you_mean(key)}")
        rule = SCHEMA[key].rule
        if rule.allowed.startswith("a number"):
            value = _as_float(value)
        if not rule.check(value):
            raise UserError(f"{source}: {key} = {value!r} is not allowed; expected {rule.allowed}")
        twice = repeated(value) if rule.distinct else []
        if twice:
            listed = ", ".join(map(repr, twice))
            raise UserError(f"{source}: {key} = {value!r} lists {listed} more than once; list each once "
                            "(every item is a value of the grid: a repeat would run the same cells twice)")
        _set(tree, key, value)
    _check_recipes(tree, source)
    _check_relations(tree, source)
    return tree


def _check_recipes(p: Params, source: str) -> None:
    """Each recipe a delta over ``train`` (its keys train's, its values what train allows, ``lr`` also
    ``tuned``), normalised in place (null -> {}, numbers as floats); each grid list names recipes
    whose lr belongs to it."""
    allowed = [k.removeprefix("train.") for k in SCHEMA
               if k.startswith("train.") and k.removeprefix("train.") not in RECIPE_LOCATIONS]
    for name, delta in list(p["recipes"].items()):
        where = f"{source}: recipe {name!r}"
        if not isinstance(name, str) or not RECIPE_NAME.fullmatch(name):
            raise UserError(f"{where}: a recipe name is letters, digits, '_' and '.', not first (it "
                            "names a folder and a DVC stage)")
        if not isinstance(delta, dict | None):
            raise UserError(f"{where} = {delta!r}: expected a mapping of train keys, e.g. {{lr: 1.0e-4}}")
        delta = dict(delta or {})
        for key, value in delta.items():
            if key not in allowed:
                raise UserError(f"{where} sets unknown key {key!r}; a recipe sets train keys: "
                                f"{', '.join(allowed)}")
            if key == "lr" and value == TUNED:
                continue
            rule = SCHEMA[f"train.{key}"].rule
            value = _as_float(value) if rule.allowed.startswith("a number") else value
            if not rule.check(value):
                also = " or 'tuned' (the lr of this recipe's sweep)" if key == "lr" else ""
                raise UserError(f"{where}: {key} = {value!r} is not allowed; expected {rule.allowed}{also}")
            delta[key] = value
        p["recipes"][name] = delta
    for grid_key, tuned in (("recipes", False), ("tuned_recipes", True)):
        for name in p["grid"][grid_key]:
            if name not in p["recipes"]:
                raise UserError(f"{source}: grid.{grid_key} has {name!r}, which is not a recipe; "
                                f"recipes: {', '.join(p['recipes']) or 'none'}")
            if is_tuned(p, name) != tuned:
                right = "grid.tuned_recipes" if is_tuned(p, name) else "grid.recipes"
                raise UserError(f"{source}: grid.{grid_key} has {name!r}, whose lr is "
                                f"{recipe(p, name)['lr']!r}; list it in {right} (grid.recipes: a fixed lr, "
                                "grid.tuned_recipes: lr tuned)")


def recipe(p: Params, name: str) -> dict[str, Any]:
    """Recipe ``name`` resolved: ``train`` (the base recipe) with the recipe's delta over it."""
    if name not in p["recipes"]:
        raise UserError(f"unknown recipe {name!r}; recipes: {', '.join(p['recipes']) or 'none'}")
    return {**p["train"], **(p["recipes"][name] or {})}


def recipe_params(p: Params, name: str) -> Params:
    """``p`` with its ``train`` section replaced by recipe ``name`` resolved: what one cell reads."""
    return {**p, "train": recipe(p, name)}


def is_tuned(p: Params, name: str) -> bool:
    """Whether recipe ``name`` trains at its sweep's best lr (its cells: the tuned-lr grid)."""
    return recipe(p, name)["lr"] == TUNED


def grid_recipes(p: Params) -> list[str]:
    """The recipes the grid trains: the fixed-lr ones, then the tuned-lr ones."""
    return [*p["grid"]["recipes"], *p["grid"]["tuned_recipes"]]


def _as_float(value: Any) -> Any:
    # YAML 1.1 reads "1e-3" (no dot) as a string, and 3 as an int: both mean a number here.
    if isinstance(value, bool):
        return value
    try:
        return float(value) if isinstance(value, int | str) else value
    except ValueError:
        return value


def _check_relations(p: Params, source: str) -> None:
    from .model import freezing  # registries; imported late to keep config import light
    from .model import registry as models

    g = p["grid"]
    for axes in (("models", "freeze_modes"), ("tuned_models", "tuned_freeze_modes")):
        for name in g[axes[0]]:
            models.spec(name)
            for mode in g[axes[1]]:
                freezing.check(name, mode)
    _check_listed_cells(p, source)
    _check_reference(p, source)
    _check_sizes(p, source)
    recipes = [p["train"], *(recipe(p, name) for name in grid_recipes(p))]
    for weights in dict.fromkeys(t["weights"] for t in recipes):
        if weights != "none":
            _check_weights(p, weights, source)
        _check_pretrain(p, weights, source)
    total = p["split"]["train"] + p["split"]["val"] + p["split"]["test"]
    if abs(total - 1.0) > 1e-6:
        raise UserError(f"{source}: split.train + split.val + split.test = {total:g}; must sum to 1")
    if p["sweep"]["lr_low"] >= p["sweep"]["lr_high"]:
        raise UserError(
            f"{source}: sweep.lr_low = {p['sweep']['lr_low']:g} must be below "
            f"sweep.lr_high = {p['sweep']['lr_high']:g}"
        )
    for name in [None, *grid_recipes(p)]:  # the base recipe, then each the grid trains
        t = p["train"] if name is None else recipe(p, name)
        key, epochs = (("train.warmup_epochs", "train.epochs") if name is None
                       else (f"recipe {name!r}: warmup_epochs", "epochs"))
        if t["warmup_epochs"] >= t["epochs"] and t["warmup_epochs"] > 0:
            raise UserError(f"{source}: {key} = {t['warmup_epochs']} must be below {epochs} = "
                            f"{t['epochs']} (the warm-up would never end)")
        _check_phases(t, "train." if name is None else f"recipe {name!r}: ",
                      (name is None or is_tuned(p, name)) and pairs(p, "tuned"), p, source)
        if (name is None or is_tuned(p, name)) and pairs(p, "tuned") \
                and 0 < p["sweep"]["epochs"] <= t["warmup_epochs"]:
            raise UserError(f"{source}: {key} = {t['warmup_epochs']} must be below sweep.epochs = "
                            f"{p['sweep']['epochs']} (sweep trials use the same warm-up, which would "
                            "never end)")
    cells = p["split"]["folds"] * p["split"]["repeats"] if p["split"]["scheme"] == "kfold" else 1
    for section in ("grid", "sweep"):
        outside = [f for f in p[section]["folds"] if f >= cells]
        if outside:
            allowed = (f"0 .. {cells - 1} (split.folds x split.repeats)" if cells > 1
                       else f"[0] (split.scheme = {p['split']['scheme']!r} is one split)")
            raise UserError(f"{source}: {section}.folds = {p[section]['folds']} has {outside}; "
                            f"allowed: {allowed}")
    _check_lr_study(p, source)
    if p["split"]["scheme"] == "filtered" and p["data"]["source"] != "gtzan":
        raise UserError(
            f"{source}: split.scheme = 'filtered' needs data.source = 'gtzan' "
            f"(got {p['data']['source']!r}); use 'stratified'"
        )
    if p["data"]["source"] in ("gtzan", "folder") and not p["data"]["path"] and not p["data"]["download"]:
        raise UserError(f"{source}: data.source = {p['data']['source']!r} needs data.path (the audio tree)")


def listed_pairs(p: Params) -> list[tuple[str, str]]:
    """The (model, freeze mode) pairs of ``grid.cells`` (``_check_listed_cells`` checks their form)."""
    return [tuple(cell.split("/", 1)) for cell in p["grid"]["cells"]]  # type: ignore[misc]


def pairs(p: Params, lr_source: str) -> list[tuple[str, str]]:
    """The (model, freeze mode) pairs of an lr source: its product, then (fixed) ``grid.cells``;
    none when the grid crosses them with no recipe (``grid.recipes`` / ``grid.tuned_recipes``)."""
    g = p["grid"]
    if not g["tuned_recipes" if lr_source == "tuned" else "recipes"]:
        return []
    if lr_source == "tuned":
        return [(m, f) for m in g["tuned_models"] for f in g["tuned_freeze_modes"]]
    return [(m, f) for m in g["models"] for f in g["freeze_modes"]] + listed_pairs(p)


def _check_phases(t: dict[str, Any], key: str, tuned: bool, p: Params, source: str) -> None:
    """LP-FT's head-only phase ends before the run (and a sweep trial) does; the warm-up restarts
    with each phase's fresh schedule, so it must end within both phases. ``t``: one recipe resolved
    (``key`` names it in errors); ``tuned``: whether sweep trials run it."""
    lp, warmup = t["lp_epochs"], t["warmup_epochs"]
    if not lp:
        return
    runs = [(f"{key}epochs", t["epochs"])]
    if tuned and p["sweep"]["epochs"] > 0:
        runs.append(("sweep.epochs", p["sweep"]["epochs"]))
    for what, epochs in runs:
        if lp >= epochs:
            raise UserError(f"{source}: {key}lp_epochs = {lp} must be below {what} = {epochs} (the "
                            "head-only phase would never end; a whole run on the head is freeze mode "
                            "freeze_patch_0_11 or freeze_0_1_2_3_4)")
        if warmup and warmup >= min(lp, epochs - lp):
            raise UserError(f"{source}: {key}warmup_epochs = {warmup} must be below both LP-FT "
                            f"phases ({lp} head-only and {epochs - lp} more epochs of {what}): each "
                            "phase restarts the schedule")


def _check_listed_cells(p: Params, source: str) -> None:
    """``grid.cells``: each ``<model>/<mode>`` of a known model and mode, once, outside the product."""
    from .model import freezing
    from .model import registry as models

    t = p["grid"]
    product = {(m, f) for m in t["models"] for f in t["freeze_modes"]}  # pairs(p, "fixed") less the cells
    seen: set[str] = set()
    for cell in t["cells"]:
        model, sep, mode = cell.partition("/")
        where = f"{source}: grid.cells has {cell!r}"
        if not (sep and model and mode) or "/" in mode:
            raise UserError(f"{where}; each item is '<model>/<freeze mode>', e.g. 'resnet50/freeze_0_1'")
        if cell in seen:
            raise UserError(f"{where} twice; list each cell once")
        if (model, mode) in product:
            raise UserError(f"{where}, which grid.models x grid.freeze_modes already holds; "
                            "list only cells outside that product")
        seen.add(cell)
        try:
            models.spec(model)
            freezing.check(model, mode)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None


def _check_reference(p: Params, source: str) -> None:
    """compare judges each model's modes against compare.reference_mode: every grid must train it."""
    t, reference = p["grid"], p["compare"]["reference_mode"]
    grids = {"the fixed-lr grid": pairs(p, "fixed"), "the tuned-lr grid": pairs(p, "tuned")}
    for name, cells in grids.items():
        for model in dict.fromkeys(m for m, _ in cells):
            if (model, reference) not in cells:
                fix = ("grid.tuned_freeze_modes" if name == "the tuned-lr grid" else
                       "grid.freeze_modes" if model in t["models"] else "grid.cells")
                raise UserError(f"{source}: compare.reference_mode = {reference!r}, but {name} has no "
                                f"{model}/{reference} cells to judge {model}'s modes against; "
                                f"add it to {fix}")


def _check_lr_study(p: Params, source: str) -> None:
    """The two lr sources: something to train, and sweep trials that never replay a training run."""
    t, s = p["grid"], p["sweep"]
    if not pairs(p, "fixed") and not pairs(p, "tuned"):
        raise UserError(f"{source}: nothing to train: the fixed-lr grid (grid.models x "
                        "grid.freeze_modes, grid.cells, x grid.recipes) and the tuned-lr grid "
                        "(grid.tuned_models x grid.tuned_freeze_modes x grid.tuned_recipes) are all empty")
    shared = sorted(set(s["seeds"]) & set(t["seeds"]))
    if shared:
        raise UserError(f"{source}: sweep.seeds = {s['seeds']} shares {shared} with grid.seeds = "
                        f"{t['seeds']}; a sweep trial must not replay a training run: use other seeds")
    if len(set(s["seeds"])) * len(set(s["folds"])) < 2:
        raise UserError(f"{source}: sweep.seeds = {s['seeds']} x sweep.folds = {s['folds']} is one run per "
                        "trial; a trial averages at least two (add a seed or a fold)")


def _check_sizes(p: Params, source: str) -> None:
    """The spectrogram recipe against the clip: no empty mel band, no skipped sample, and one clip's
    STFT within ``MAX_STFT_BYTES`` (a hop of 1 would make GTZAN's 5.4 GB per clip and worker)."""
    f = p["features"]
    samples = round(p["data"]["sample_rate"] * p["data"]["clip_seconds"])
    bins = f["n_fft"] // 2 + 1
    if f["n_fft"] > samples:
        raise UserError(f"{source}: features.n_fft = {f['n_fft']} is longer than a clip ({samples:,} "
                        "samples: data.sample_rate x data.clip_seconds); allowed: up to that")
    if f["hop_length"] > f["n_fft"]:
        raise UserError(f"{source}: features.hop_length = {f['hop_length']} exceeds features.n_fft = "
                        f"{f['n_fft']} (samples between windows would be skipped); "
                        f"allowed: 1 .. {f['n_fft']}")
    if f["n_mels"] > bins:
        raise UserError(f"{source}: features.n_mels = {f['n_mels']} exceeds the {bins} frequency bins "
                        f"of features.n_fft = {f['n_fft']} (some mel bands would be empty); "
                        f"allowed: 1 .. {bins}")
    frames = samples // f["hop_length"] + 1
    stft = bins * frames * 8
    if stft > MAX_STFT_BYTES:
        least = math.ceil(bins * samples * 8 / MAX_STFT_BYTES)
        raise UserError(f"{source}: features.hop_length = {f['hop_length']} makes one clip's STFT "
                        f"{stft / 2**30:.1f} GiB ({bins} bins x {frames:,} frames x 8 bytes), over the "
                        f"{MAX_STFT_BYTES >> 30} GiB a feature worker may use; allowed: "
                        f"features.hop_length >= {least} for these clips and n_fft")


def _check_weights(p: Params, value: str, source: str) -> None:
    """Every model of the grid has the weights ``value`` (a ``train.weights`` of the base or a grid
    recipe) names, at ``features.image_size`` and with the normalisation the inputs get
    (``data.inputs``: ImageNet's mean and std)."""
    from .data import IMAGENET_MEAN, IMAGENET_STD
    from .model import registry as models

    size = p["features"]["image_size"]
    listed = [cell.partition("/")[0] for cell in p["grid"]["cells"]]
    for name in dict.fromkeys(p["grid"]["models"] + listed + p["grid"]["tuned_models"]):
        try:
            w = models.entry(name, value)
            if w is None:
                continue
            models.check_image_size(name, w, size)
        except UserError as err:
            raise UserError(f"{source}: {err}") from None
        got = models.expect(w)
        if not (_close(got.mean, IMAGENET_MEAN) and _close(got.std, IMAGENET_STD)):
            raise UserError(f"{source}: train.weights = {value!r} of {name} expects inputs normalised "
                            f"with mean {got.mean} and std {got.std}; the inputs get ImageNet's "
                            f"{IMAGENET_MEAN} / {IMAGENET_STD} (data/inputs.py): not supported")


def _check_pretrain(p: Params, value: str, source: str) -> None:
    """pretrain.models are registry models; a grid model that loads ``<pretrain.out>/{model}.pt``
    is among them (else the train stage would wait for a file the pretrain stage never writes)."""
    from .model import registry as models

    for name in p["pretrain"]["models"]:
        models.spec(name)
    if not (models.is_file_value(value) and "{model}" in value
            and Path(value).parent == Path(p["pretrain"]["out"])):
        return
    listed = [cell.partition("/")[0] for cell in p["grid"]["cells"]]
    missing = [m for m in dict.fromkeys(p["grid"]["models"] + listed + p["grid"]["tuned_models"])
               if m not in p["pretrain"]["models"]]
    if missing:
        raise UserError(f"{source}: train.weights = {value} but pretrain.models lacks {', '.join(missing)}; "
                        f"allowed: add them to pretrain.models, or train.weights = none")


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(abs(x - y) < 1e-6 for x, y in zip(a, b, strict=True))


def _did_you_mean(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, SCHEMA, n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid sections: {', '.join(sections())})"


def sections() -> list[str]:
    return sorted({k.split(".")[0] for k in SCHEMA})


def _flatten(tree: dict, prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and dotted not in SCHEMA:  # a mapping-valued key (recipes) is a leaf
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _set(tree: Params, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def flat(params: Params) -> dict[str, Any]:
    """``{dotted.key: value}`` view, used for MLflow params and comparisons."""
    return dict(_flatten(params))


def project_root() -> Path:
    """The project whose stores (MLflow, Optuna) this process writes to.

    ``dvc exp run --temp`` and ``--queue`` run in a temporary copy under ``.dvc/tmp/exps/`` that is
    deleted afterwards; DVC names the project they belong to in ``DVC_ROOT``. Outside DVC it is
    the working directory.
    """
    return Path(os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def resolve_path(path: str | Path) -> Path:
    """``path`` as an absolute path, a relative one taken from the project root."""
    path = Path(path)
    return path if path.is_absolute() else project_root() / path


def resolve_url(url: str) -> str:
    """A store URL whose relative ``sqlite:///`` file is taken from the project root; others as given."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == prefix + ":memory:":
        return url
    path = url[len(prefix):]
    return url if path.startswith("/") else prefix + str(resolve_path(path))

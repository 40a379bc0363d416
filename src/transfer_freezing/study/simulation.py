"""Planted-effect simulations of the study's designs, for testing and measuring the statistics.

Outcomes per clip are Bernoulli(expit(η)) with, on the logit scale, η = μ_arm + u_clip +
w_clip·[mode] + c_cell,arm + a_run,arm: clip difficulty u shared by both arms, a mode × clip
interaction w (the mode effect varies between clips), a fold-cell (training-set) effect c shared
by every seed of the cell, and a run (seed within cell) effect a. The planted difference is the
population accuracy difference mode − reference, exact by Gauss–Hermite quadrature over the
logit-normal. With one fixed test set (folds = 1) the training set is one draw: no cell effect is
planted, since the interval is then conditional on that training set.

Everything is vectorised over simulations: ``simulate`` returns arrays with a leading
simulation axis; ``to_clip_table`` turns one simulation into the compare stage's clip table.
``simulate_interaction`` plants a mode x recipe interaction: four arms (mode, reference) x
(recipe A, recipe B), each with its own cell and run effects, the runs of one (seed, cell) trained
on the same clips; ``to_interaction_table`` is its clip table.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special

_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(101)


@dataclass(frozen=True)
class Condition:
    """One simulated design: ``clips`` × (``folds`` × ``repeats`` cells) × ``seeds`` per cell."""

    name: str
    clips: int
    folds: int  # 1: one fixed test set, scored by every seed
    repeats: int
    seeds: int
    sd_cell: float = 0.0  # logit sd of a fold cell's training-set effect, per arm
    sd_run: float = 0.25  # logit sd of a run's (seed within cell) effect, per arm
    sd_clip: float = 2.0  # clip difficulty, shared by both arms
    sd_clip_mode: float = 0.4  # mode × clip interaction
    base_acc: float = 0.72  # the reference's population accuracy
    margin: float = 3.0  # equivalence margin (pp) the condition is judged against
    rng_seed: int = 0

    def __post_init__(self) -> None:
        if self.folds == 1 and (self.sd_cell or self.repeats != 1):
            raise ValueError("one fixed test set: one training set, so no cell effect and one repeat")

    @property
    def sd_arms(self) -> tuple[float, float]:
        """Total logit sd of (mode, reference) over clips, cells and runs."""
        common = self.sd_clip**2 + self.sd_cell**2 + self.sd_run**2
        return math.sqrt(common + self.sd_clip_mode**2), math.sqrt(common)


CONDITIONS = (
    Condition("one-pass 3-fold, 134/133/133 clips, 1 seed", clips=400, folds=3, repeats=1, seeds=1,
              rng_seed=101),
    Condition("shared fold-cell effect, 5 folds × 3 seeds", clips=400, folds=5, repeats=1, seeds=3,
              sd_cell=0.3, rng_seed=102),
    Condition("seed effect, 3 folds × 2 repeats × 3 seeds", clips=300, folds=3, repeats=2, seeds=3,
              sd_run=0.6, rng_seed=103),
    Condition("fixed test set, 2 runs × 100 clips", clips=100, folds=1, repeats=1, seeds=2, rng_seed=104),
    Condition("fixed test set, 3 runs × 100 clips", clips=100, folds=1, repeats=1, seeds=3, rng_seed=105),
    Condition("repeats, 3 folds × 3 repeats × 2 seeds, cell effect", clips=300, folds=3, repeats=3,
              seeds=2, sd_cell=0.2, rng_seed=106),
)


@dataclass(frozen=True)
class Batch:
    """``n`` simulated studies of one design.

    ``correct``: (n, 2, seeds, repeats, clips) bool, arm 0 the mode and arm 1 the reference;
    ``fold``: (n, repeats, clips) the fold that holds each clip out in each repeat.
    """

    correct: np.ndarray
    fold: np.ndarray
    truth: float

    @property
    def diff(self) -> np.ndarray:
        """(n, seeds, repeats, clips) paired differences mode − reference in pp."""
        return 100.0 * (self.correct[:, 0].astype(float) - self.correct[:, 1])


def _accuracy(mu: float, sd: float) -> float:
    """E[expit(mu + sd·Z)], Z standard normal."""
    return float(special.expit(mu + sd * _NODES) @ _WEIGHTS / math.sqrt(2 * math.pi))


@functools.cache
def _intercepts(delta_pp: float, base_acc: float, sd_mode: float, sd_ref: float) -> tuple[float, float]:
    """Logit intercepts (mode, reference) whose population accuracies differ by ``delta_pp``."""

    def solve(acc: float, sd: float) -> float:
        return optimize.brentq(lambda m: _accuracy(m, sd) - acc, -30, 30)

    return solve(base_acc + delta_pp / 100, sd_mode), solve(base_acc, sd_ref)


def simulate(cond: Condition, delta_pp: float, n: int, rng: np.random.Generator) -> Batch:
    """``n`` studies of ``cond`` with a planted population difference of ``delta_pp`` pp."""
    mu = np.array(_intercepts(float(delta_pp), cond.base_acc, *cond.sd_arms))
    k, r, s, c = cond.folds, cond.repeats, cond.seeds, cond.clips
    # fold of each clip per repeat: a random permutation cut into K near-equal folds (400/3: 134/133/133)
    rank = np.argsort(np.argsort(rng.random((n, r, c)), axis=-1), axis=-1)
    fold = rank % k
    u = rng.normal(0.0, cond.sd_clip, (n, 1, 1, 1, c))
    w = rng.normal(0.0, cond.sd_clip_mode, (n, 1, 1, 1, c)) * np.array([1.0, 0.0])[:, None, None, None]
    cell = rng.normal(0.0, cond.sd_cell, (n, 2, 1, r, k)) if cond.sd_cell else np.zeros((n, 2, 1, r, k))
    run = rng.normal(0.0, cond.sd_run, (n, 2, s, r, k))
    per_clip = np.take_along_axis(cell + run, np.broadcast_to(fold[:, None, None], (n, 2, s, r, c)), axis=-1)
    eta = mu[:, None, None, None] + u + w + per_clip
    correct = rng.random(eta.shape) < special.expit(eta)
    return Batch(correct=correct, fold=fold, truth=float(delta_pp))


def to_clip_table(batch: Batch, i: int) -> pd.DataFrame:
    """Simulation ``i`` of ``batch`` as a clip table (modes ``mode`` and ``ref``)."""
    correct = batch.correct[i]
    arm, seed, repeat, clip = np.indices(correct.shape)
    fold = np.broadcast_to(batch.fold[i][None, None], correct.shape)
    return pd.DataFrame({
        "mode": np.array(["mode", "ref"])[arm.ravel()],
        "seed": seed.ravel(),
        "fold": fold.ravel(),
        "repeat": repeat.ravel(),
        "clip_id": clip.ravel(),
        "correct": correct.ravel().astype(int),
    })


@dataclass(frozen=True)
class InteractionBatch:
    """``n`` simulated studies of two recipes x (mode, reference).

    ``correct``: (n, 4, seeds, repeats, clips) bool, arms (mode, reference) under recipe B, then
    under recipe A; ``fold`` as ``Batch``'s; ``truth`` the planted population interaction (pp).
    """

    correct: np.ndarray
    fold: np.ndarray
    truth: float

    @property
    def diff(self) -> np.ndarray:
        """(n, seeds, repeats, clips): (mode − reference under B) − (mode − reference under A), pp."""
        c = self.correct.astype(float)
        return 100.0 * ((c[:, 0] - c[:, 1]) - (c[:, 2] - c[:, 3]))


ARMS = (("B", "mode"), ("B", "ref"), ("A", "mode"), ("A", "ref"))  # (recipe, mode) of each arm


def simulate_interaction(cond: Condition, effect_a: float, interaction: float, n: int,
                         rng: np.random.Generator) -> InteractionBatch:
    """``n`` studies of ``cond`` in which mode − reference is ``effect_a`` pp under recipe A and
    ``effect_a + interaction`` pp under recipe B (both references at ``cond.base_acc``).

    Logit model per arm: μ_arm + u_clip + w_clip·[mode] + v_clip·[mode, B] + c_cell,arm + a_run,arm;
    v (sd ``cond.sd_clip_mode``) makes the interaction vary between clips as w does the effect."""
    sd_common = math.sqrt(cond.sd_clip**2 + cond.sd_cell**2 + cond.sd_run**2)
    sd_mode_a = math.sqrt(sd_common**2 + cond.sd_clip_mode**2)
    sd_mode_b = math.sqrt(sd_mode_a**2 + cond.sd_clip_mode**2)
    mode_a, ref = _intercepts(float(effect_a), cond.base_acc, sd_mode_a, sd_common)
    mode_b, _ = _intercepts(float(effect_a + interaction), cond.base_acc, sd_mode_b, sd_common)
    mu = np.array([mode_b, ref, mode_a, ref])
    k, r, s, c = cond.folds, cond.repeats, cond.seeds, cond.clips
    rank = np.argsort(np.argsort(rng.random((n, r, c)), axis=-1), axis=-1)
    fold = rank % k
    u = rng.normal(0.0, cond.sd_clip, (n, 1, 1, 1, c))
    is_mode = np.array([1.0, 0.0, 1.0, 0.0])[:, None, None, None]
    is_mode_b = np.array([1.0, 0.0, 0.0, 0.0])[:, None, None, None]
    w = rng.normal(0.0, cond.sd_clip_mode, (n, 1, 1, 1, c)) * is_mode
    v = rng.normal(0.0, cond.sd_clip_mode, (n, 1, 1, 1, c)) * is_mode_b
    cell = rng.normal(0.0, cond.sd_cell, (n, 4, 1, r, k)) if cond.sd_cell else np.zeros((n, 4, 1, r, k))
    run = rng.normal(0.0, cond.sd_run, (n, 4, s, r, k))
    per_clip = np.take_along_axis(cell + run, np.broadcast_to(fold[:, None, None], (n, 4, s, r, c)), axis=-1)
    eta = mu[:, None, None, None] + u + w + v + per_clip
    correct = rng.random(eta.shape) < special.expit(eta)
    return InteractionBatch(correct=correct, fold=fold, truth=float(interaction))


def to_interaction_table(batch: InteractionBatch, i: int) -> pd.DataFrame:
    """Simulation ``i`` of ``batch`` as a clip table with a ``recipe`` column (recipes ``A``, ``B``;
    modes ``mode``, ``ref``)."""
    correct = batch.correct[i]
    arm, seed, repeat, clip = np.indices(correct.shape)
    fold = np.broadcast_to(batch.fold[i][None, None], correct.shape)
    return pd.DataFrame({
        "recipe": np.array([a[0] for a in ARMS])[arm.ravel()],
        "mode": np.array([a[1] for a in ARMS])[arm.ravel()],
        "seed": seed.ravel(),
        "fold": fold.ravel(),
        "repeat": repeat.ravel(),
        "clip_id": clip.ravel(),
        "correct": correct.ravel().astype(int),
    })

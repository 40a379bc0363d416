"""A formula-driven image set: FractalDB-style fractals (Kataoka et al. 2020), numpy only.

A class is one iterated function system (IFS): 2-4 random contractive affine maps of the plane,
each picked with probability proportional to |det A|. An instance of the class renders the chaos
game of that IFS with one map's parameters scaled by a factor in [0.8, 1.2] (FractalDB's
per-instance variation) and a random left-right flip, as a grey image in [0, 1]. Nothing natural
is in it and nothing of the target task (spectrograms of music): a source task to pretrain on.
Deterministic for a seed.
"""

from __future__ import annotations

import numpy as np

MAPS = (2, 4)  # maps per IFS, inclusive
CONTRACTION = (0.25, 0.8)  # spectral norm of each map's linear part
VARIATION = (0.8, 1.2)  # one map's parameters scaled by this per instance
BURN_IN = 20  # chaos-game steps before points are drawn


def random_ifs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One IFS: linear parts (k, 2, 2), offsets (k, 2) and map probabilities (k,)."""
    k = int(rng.integers(MAPS[0], MAPS[1] + 1))
    a = rng.uniform(-1, 1, size=(k, 2, 2))
    norms = np.linalg.norm(a, ord=2, axis=(1, 2))
    a *= (rng.uniform(*CONTRACTION, size=k) / norms)[:, None, None]
    b = rng.uniform(-1, 1, size=(k, 2))
    p = np.abs(np.linalg.det(a)) + 1e-3
    return a, b, p / p.sum()


def render(systems: list[tuple[np.ndarray, np.ndarray, np.ndarray]], size: int, points: int,
           rng: np.random.Generator) -> np.ndarray:
    """Chaos-game images (n, size, size) in [0, 1] of ``systems``, all run side by side."""
    n, k_max = len(systems), max(len(s[2]) for s in systems)
    a = np.zeros((n, k_max, 2, 2))
    b = np.zeros((n, k_max, 2))
    cum = np.ones((n, k_max))
    for i, (ai, bi, pi) in enumerate(systems):
        a[i, : len(pi)], b[i, : len(pi)], cum[i, : len(pi)] = ai, bi, np.cumsum(pi)
    xy = np.zeros((n, 2))
    rows = np.arange(n)
    trace = np.empty((points, n, 2))
    for step in range(BURN_IN + points):
        pick = (rng.random((n, 1)) > cum).sum(axis=1)
        xy = np.einsum("nij,nj->ni", a[rows, pick], xy) + b[rows, pick]
        if step >= BURN_IN:
            trace[step - BURN_IN] = xy
    lo, hi = np.percentile(trace, [1, 99], axis=0)  # (n, 2) each: a robust bounding box
    scaled = (trace - lo) / np.maximum(hi - lo, 1e-9)
    cells = np.clip((scaled * (size - 1)).round().astype(np.int64), 0, size - 1)
    images = np.zeros((n, size * size), dtype=np.float32)
    flat = cells[..., 1] * size + cells[..., 0]  # (points, n)
    np.add.at(images, (np.broadcast_to(rows, flat.shape), flat), 1.0)
    images = np.log1p(images.reshape(n, size, size))
    return images / np.maximum(images.max(axis=(1, 2), keepdims=True), 1e-9)


def dataset(classes: int, per_class: int, size: int, points: int, seed: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` x ``per_class`` fractal images (float32, (N, size, size), [0, 1]) and labels."""
    rng = np.random.default_rng(seed)
    bases = [random_ifs(rng) for _ in range(classes)]
    systems, labels = [], []
    for label, (a, b, p) in enumerate(bases):
        for _ in range(per_class):
            a2, b2 = a.copy(), b.copy()
            j = int(rng.integers(len(p)))
            factor = rng.uniform(*VARIATION)
            a2[j] *= factor
            b2[j] *= factor
            systems.append((a2, b2, p))
            labels.append(label)
    images = render(systems, size, points, rng)
    flip = rng.random(len(images)) < 0.5
    images[flip] = images[flip, :, ::-1]
    return images, np.asarray(labels, dtype=np.int64)

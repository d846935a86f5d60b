"""Random update matrices for the Byzantine maths' tests, the shapes they run at, and the relative closeness
they are held to against an independent implementation."""

from __future__ import annotations

import numpy as np

SHAPES = [(5, 10), (17, 1000), (50, 100_000)]  # (n, d)

RELATIVE = 1e-6


def vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """n heterogeneous vectors: a shared direction, a per-vector offset and noise, some of them far out."""
    rng = np.random.default_rng([seed, n, d])
    x = rng.normal(0.5, 1.0, d) + rng.normal(0, 2.0, (n, 1)) * rng.normal(size=d) + rng.normal(0, 1.0, (n, d))
    x[: max(1, n // 5)] *= 4.0
    return x


def assert_close(ours: np.ndarray, theirs) -> None:
    theirs = np.asarray(theirs, np.float64)
    scale = max(float(np.abs(theirs).max()), 1e-12)
    assert np.abs(np.asarray(ours, np.float64) - theirs).max() <= RELATIVE * scale

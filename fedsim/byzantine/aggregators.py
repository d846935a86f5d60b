"""Robust aggregation rules and pre-aggregation steps on a round's update matrix (a row per client).
Formulas, papers and conventions: docs/explanation/byzantine.md."""

from __future__ import annotations

import numpy as np

from fedsim.byzantine.vectors import BLOCK, centred_gram, squared_distances


def row_norms(matrix: np.ndarray) -> np.ndarray:
    """Each row's Euclidean norm, accumulated in float64."""
    squares = np.zeros(len(matrix))
    for at in range(0, matrix.shape[1], BLOCK):
        block = matrix[:, at : at + BLOCK].astype(np.float64)
        squares += np.einsum("ij,ij->i", block, block)
    return np.sqrt(squares)


def centered_clipping(matrix: np.ndarray, center: np.ndarray, tau: float, iterations: int) -> np.ndarray:
    """Centered clipping (Karimireddy, He & Jaggi, ICML 2021): from v = center, `iterations` times
    v <- v + (1/n) sum_i clip_tau(x_i - v), clip_tau(y) = y * min(1, tau / |y|)."""
    v = center.astype(np.float64)
    for _ in range(iterations):
        differences = matrix.astype(np.float64) - v
        sizes = np.linalg.norm(differences, axis=1)
        with np.errstate(divide="ignore"):
            scale = np.minimum(1.0, tau / sizes)
        v = v + (differences * scale[:, None]).mean(axis=0)
    return v


def geometric_median(matrix: np.ndarray, nu: float, iterations: int, weights: np.ndarray | None = None) -> np.ndarray:
    """RFA's smoothed Weiszfeld (Pillutla, Kakade & Harchaoui, 2022): from z = 0 (the global model),
    `iterations` times z <- sum_i beta_i x_i / sum_i beta_i, beta_i = alpha_i / max(nu, |z - x_i|), with alpha the
    weights (uniform when None)."""
    alpha = np.full(len(matrix), 1 / len(matrix)) if weights is None else np.asarray(weights, np.float64)
    z = np.zeros(matrix.shape[1])
    for _ in range(iterations):
        distances = np.maximum(row_norms(matrix - z), nu)
        beta = alpha / distances
        z = (beta @ matrix.astype(np.float64)) / beta.sum()
    return z


def nnm(matrix: np.ndarray, f: int) -> np.ndarray:
    """Nearest-neighbour mixing (Allouah et al., AISTATS 2023): each row replaced by the mean of its n - f nearest
    rows (itself included), by Euclidean distance."""
    _, gram = centred_gram(matrix)
    nearest = np.argsort(squared_distances(gram), axis=1, kind="stable")[:, : len(matrix) - f]
    mixed = np.empty(matrix.shape, np.float64)
    for i, rows in enumerate(nearest):
        mixed[i] = matrix[np.sort(rows)].mean(axis=0, dtype=np.float64)
    return mixed


def bucketing(matrix: np.ndarray, s: int, order: np.ndarray) -> np.ndarray:
    """Bucketing (Karimireddy, He & Jaggi, ICLR 2022): the rows in `order` (a random permutation), cut into
    buckets of s consecutive rows, each bucket replaced by its mean; a last, smaller bucket keeps its own mean."""
    shuffled = matrix[order]
    return np.stack([shuffled[at : at + s].mean(axis=0, dtype=np.float64) for at in range(0, len(matrix), s)])


def arc(matrix: np.ndarray, f: int) -> np.ndarray:
    """Adaptive robust clipping (Allouah et al., 2024): the k = floor(2 (f / n) (n - f)) largest rows (by norm)
    clipped to the norm of the (k + 1)-th largest; the others unchanged."""
    n = len(matrix)
    k = int(2 * f / n * (n - f))
    out = matrix.astype(np.float64)
    if k == 0:
        return out
    norms = row_norms(matrix)
    order = np.argsort(norms, kind="stable")
    threshold = norms[order[n - k - 1]]
    for i in order[n - k :]:
        if norms[i] > threshold:
            out[i] *= threshold / norms[i]
    return out

"""Robust aggregation rules and pre-aggregation steps on a round's update matrix (a row per client, dense or sparse:
fedsim.byzantine.vectors). Formulas, papers and conventions: docs/explanation/byzantine.md."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from fedsim.byzantine.vectors import Matrix, centred_gram, combine, distances_to, row_norms, squared_distances


def centered_clipping(matrix: Matrix, center: np.ndarray, tau: float, iterations: int) -> np.ndarray:
    """Centered clipping (Karimireddy, He & Jaggi, ICML 2021): from v = center, `iterations` times
    v <- v + (1/n) sum_i clip_tau(x_i - v), clip_tau(y) = y * min(1, tau / |y|)."""
    v = center.astype(np.float64)
    n = matrix.shape[0]
    for _ in range(iterations):
        if sparse.issparse(matrix):  # sum_i s_i (x_i - v) without the dense differences
            with np.errstate(divide="ignore"):
                scale = np.minimum(1.0, tau / distances_to(matrix, v))
            v = v + (combine(scale, matrix) - scale.sum() * v) / n
            continue
        differences = matrix.astype(np.float64) - v
        sizes = np.linalg.norm(differences, axis=1)
        with np.errstate(divide="ignore"):
            scale = np.minimum(1.0, tau / sizes)
        v = v + (differences * scale[:, None]).mean(axis=0)
    return v


def geometric_median(matrix: Matrix, nu: float, iterations: int, weights: np.ndarray | None = None) -> np.ndarray:
    """RFA's smoothed Weiszfeld (Pillutla, Kakade & Harchaoui, 2022): from z = 0 (the global model),
    `iterations` times z <- sum_i beta_i x_i / sum_i beta_i, beta_i = alpha_i / max(nu, |z - x_i|), with alpha the
    weights (uniform when None)."""
    n = matrix.shape[0]
    alpha = np.full(n, 1 / n) if weights is None else np.asarray(weights, np.float64)
    z = np.zeros(matrix.shape[1])
    for _ in range(iterations):
        if sparse.issparse(matrix):
            distances = np.maximum(distances_to(matrix, z), nu)
        else:
            distances = np.maximum(row_norms(matrix - z), nu)
        beta = alpha / distances
        z = combine(beta, matrix) / beta.sum()
    return z


def nnm(matrix: Matrix, f: int) -> np.ndarray:
    """Nearest-neighbour mixing (Allouah et al., AISTATS 2023): each row replaced by the mean of its n - f nearest
    rows (itself included), by Euclidean distance."""
    _, gram = centred_gram(matrix)
    n = matrix.shape[0]
    nearest = np.argsort(squared_distances(gram), axis=1, kind="stable")[:, : n - f]
    if sparse.issparse(matrix):  # every row's mean as one product, x^T M^T with M's rows 1/(n - f) per neighbourhood
        mixing = np.zeros((n, n))
        np.put_along_axis(mixing, nearest, 1 / (n - f), axis=1)
        return np.ascontiguousarray((matrix.T @ mixing.T).T)
    mixed = np.empty(matrix.shape, np.float64)
    for i, rows in enumerate(nearest):
        mixed[i] = matrix[np.sort(rows)].mean(axis=0, dtype=np.float64)
    return mixed


def bucketing(matrix: Matrix, s: int, order: np.ndarray) -> Matrix:
    """Bucketing (Karimireddy, He & Jaggi, ICLR 2022): the rows in `order` (a random permutation), cut into
    buckets of s consecutive rows, each bucket replaced by its mean; a last, smaller bucket keeps its own mean."""
    n = matrix.shape[0]
    if sparse.issparse(matrix):  # the bucket means as one sparse product: a row of 1/size per bucket
        starts = range(0, n, s)
        sizes = [min(s, n - at) for at in starts]
        averaging = sparse.csr_array(
            (np.repeat([1 / k for k in sizes], sizes), order, np.concatenate([[0], np.cumsum(sizes)])),
            shape=(len(sizes), n),
        )
        return averaging @ matrix
    shuffled = matrix[order]
    return np.stack([shuffled[at : at + s].mean(axis=0, dtype=np.float64) for at in range(0, n, s)])


def arc(matrix: Matrix, f: int) -> Matrix:
    """Adaptive robust clipping (Allouah et al., 2024): the k = floor(2 (f / n) (n - f)) largest rows (by norm)
    clipped to the norm of the (k + 1)-th largest; the others unchanged."""
    n = matrix.shape[0]
    k = int(2 * f / n * (n - f))
    if sparse.issparse(matrix):
        out = matrix.copy()
    else:
        out = matrix.astype(np.float64)
    if k == 0:
        return out
    norms = row_norms(matrix)
    order = np.argsort(norms, kind="stable")
    threshold = norms[order[n - k - 1]]
    scale = np.ones(n)
    for i in order[n - k :]:
        if norms[i] > threshold:
            scale[i] = threshold / norms[i]
    if sparse.issparse(matrix):
        return sparse.diags_array(scale) @ out
    for i in np.flatnonzero(scale != 1):
        out[i] *= scale[i]
    return out

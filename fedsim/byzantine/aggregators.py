"""Robust aggregation rules and pre-aggregation steps on a round's update matrix (a row per client, dense or sparse:
fedsim.byzantine.vectors). Formulas, papers and conventions: docs/explanation/byzantine.md."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from fedsim.byzantine.vectors import Matrix, centred_gram, combine, distances_to, row_norms, squared_distances

SELECTIONS = ("recursive", "one_shot")  # Bulyan's selection: the paper's recursive Krum, or Flower's one Multi-Krum


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
    """RFA's smoothed Weiszfeld (Pillutla, Kakade & Harchaoui, IEEE TSP 2022): from RFA's start, the weighted mean
    z = sum_i alpha_i x_i / sum_i alpha_i, `iterations` times z <- sum_i beta_i x_i / sum_i beta_i,
    beta_i = alpha_i / max(nu, |z - x_i|), with alpha the weights (uniform when None).

    Not from z = 0 (the global model; ByzFL's start): a client that returns the model it was sent has an update of
    exactly zero, its beta_i = alpha_i / nu then outweighs every other, and z stays at or near 0 however few such
    clients there are."""
    n = matrix.shape[0]
    alpha = np.full(n, 1 / n) if weights is None else np.asarray(weights, np.float64)
    z = combine(alpha, matrix) / alpha.sum()
    for _ in range(iterations):
        if sparse.issparse(matrix):
            distances = np.maximum(distances_to(matrix, z), nu)
        else:
            distances = np.maximum(row_norms(matrix - z), nu)
        beta = alpha / distances
        z = combine(beta, matrix) / beta.sum()
    return z


def krum_scores(distances: np.ndarray, f: int) -> np.ndarray:
    """Krum's score (Blanchard et al., NeurIPS 2017) of each of n rows, from their pairwise squared distances: the
    sum of its squared distances to its n - f - 2 nearest other rows (the paper's and Flower's count; at least 1,
    as Flower, and at most the n - 1 others)."""
    n = len(distances)
    others = distances + np.diag(np.full(n, np.inf))  # a row is not its own neighbour
    return np.sort(others, axis=1)[:, : min(max(1, n - f - 2), n - 1)].sum(axis=1)


def multi_krum(matrix: Matrix, f: int, m: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Multi-Krum (Blanchard et al., NeurIPS 2017): the mean of the m rows with the smallest Krum scores (ties: the
    earlier row), plain as the paper and ByzFL, or weighted by `weights` (a reply's examples, as Flower's
    MultiKrum). Distances in float64, from the centred Gram matrix."""
    _, gram = centred_gram(matrix)
    chosen = np.argsort(krum_scores(squared_distances(gram), f), kind="stable")[:m]
    share = np.zeros(matrix.shape[0])
    share[chosen] = 1 / len(chosen) if weights is None else weights[chosen] / weights[chosen].sum()
    return combine(share, matrix)


def recursive_krum(distances: np.ndarray, f: int, theta: int) -> list[int]:
    """Bulyan's selection (El Mhamdi, Guerraoui & Rouault, ICML 2018): Krum applied recursively, each time to the
    rows not yet chosen (scores over their n_r - f - 2 nearest, n_r those that remain), its choice removed, until
    theta are chosen; in the order chosen. Flower's Bulyan instead takes the theta best scores of one Multi-Krum
    scoring of all n, which the paper's recursion need not give: a chosen row's removal changes the others'
    neighbours."""
    remaining, chosen = list(range(len(distances))), []
    while len(chosen) < theta:
        scores = krum_scores(distances[np.ix_(remaining, remaining)], f)
        chosen.append(remaining.pop(int(np.argmin(scores))))
    return chosen


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

"""A round's updates as one matrix: a row per client, a column per floating weight of the model.

The omniscient attacks and the robust aggregators act on update vectors, u = w - g (a client's weights minus the
global model it trained from), as their papers define them; integer buffers are not weights and stay the global's.
Pairwise distances come from the Gram matrix of the updates centred on their mean, accumulated in float64 over
column blocks: exact to float64 rounding, and a bounded amount of extra memory whatever the model's size.

The matrix is dense (a NumPy array) or, where the clients changed only a small share of the weights (a
cross-device round of bow clients with a few reviews each), sparse (a SciPy CSR array of float64): the same
quantities then cost time in proportion to the weights changed, not to clients x weights. Every function here
takes either; the dense forms are the reference the sparse ones are tested against (tests/byzantine/test_vectors.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

BLOCK = 1 << 12  # columns per block of the float64 accumulations: a block of a round's rows stays in cache
SPARSE_BELOW = 0.05  # the share of changed weights under which a round's update matrix is held sparse
HOT_SHARE = 0.05  # a sparse matrix's columns in more than this share of its rows multiply as a dense block

Matrix = np.ndarray | sparse.csr_array


def is_weight(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating)


def flat_size(arrays: Sequence[np.ndarray]) -> int:
    return sum(a.size for a in arrays if is_weight(a))


def updates(rows: Sequence[Sequence[np.ndarray]], start: Sequence[np.ndarray]) -> np.ndarray:
    """The (len(rows), d) float32 matrix of each row's floating tensors minus `start`'s, flattened in order."""
    matrix = np.empty((len(rows), flat_size(start)), np.float32)
    for i, weights in enumerate(rows):
        at = 0
        for w, s in zip(weights, start):
            if is_weight(s):
                np.subtract(np.asarray(w, np.float32).reshape(-1), s.reshape(-1), out=matrix[i, at : at + s.size])
                at += s.size
    return matrix


def sparse_updates(
    rows: Sequence[Sequence[tuple[np.ndarray | None, np.ndarray]]], start: Sequence[np.ndarray]
) -> sparse.csr_array:
    """The same matrix as `updates`, sparse: each row given per floating tensor as (row ids, those rows of the
    weights), or (None, the whole tensor). Entries equal to zero are kept out."""
    floats = [s for s in start if is_weight(s)]
    indptr, indices, data = [0], [], []
    for tensors in rows:
        at = count = 0
        for (ids, values), s in zip(tensors, floats):
            if ids is None:
                delta = (np.asarray(values, np.float32).reshape(-1) - s.reshape(-1)).astype(np.float64)
                columns = np.arange(s.size)
            else:
                width = s.size // s.shape[0]
                delta = (np.asarray(values, np.float32) - s[ids]).astype(np.float64).reshape(-1)
                columns = (ids[:, None] * width + np.arange(width)).reshape(-1)
            kept = delta != 0
            indices.append(columns[kept] + at)
            data.append(delta[kept])
            at, count = at + s.size, count + len(data[-1])
        indptr.append(indptr[-1] + count)
    joined = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    values = np.concatenate(data) if data else np.zeros(0)
    return sparse.csr_array((values, joined, indptr), shape=(len(rows), flat_size(start)))


def weights_from(update: np.ndarray, start: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`start` plus a flat update, tensor by tensor in `start`'s dtypes; integer buffers as `start` holds them."""
    out, at = [], 0
    for s in start:
        if is_weight(s):
            out.append((s.reshape(-1) + update[at : at + s.size]).astype(s.dtype).reshape(s.shape))
            at += s.size
        else:
            out.append(s)
    return out


def column_mean(matrix: Matrix) -> np.ndarray:
    """The mean row, float64."""
    if sparse.issparse(matrix):
        return np.asarray(matrix.sum(axis=0)).ravel() / matrix.shape[0]
    return matrix.mean(axis=0, dtype=np.float64)


def column_std(matrix: Matrix, mean: np.ndarray) -> np.ndarray:
    """The per-column standard deviation with ddof 1, accumulated in float64 block by block (sparse: from the
    column sums of squares)."""
    n = matrix.shape[0]
    if sparse.issparse(matrix):
        squares = np.asarray(matrix.multiply(matrix).sum(axis=0)).ravel()
        return np.sqrt(np.maximum(squares - n * mean * mean, 0.0) / (n - 1))
    std = np.empty(matrix.shape[1])
    for at in range(0, matrix.shape[1], BLOCK):
        block = matrix[:, at : at + BLOCK].astype(np.float64) - mean[at : at + BLOCK]
        std[at : at + BLOCK] = np.sqrt((block * block).sum(axis=0) / (n - 1))
    return std


def centred_gram(matrix: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """(the column mean, the Gram matrix of the rows minus that mean), both float64."""
    n, d = matrix.shape
    mean = column_mean(matrix)
    if sparse.issparse(matrix):
        along_mean = matrix @ mean
        return mean, sparse_gram(matrix) - along_mean[:, None] - along_mean[None, :] + mean @ mean
    gram = np.zeros((n, n))
    for at in range(0, d, BLOCK):
        block = matrix[:, at : at + BLOCK].astype(np.float64) - mean[at : at + BLOCK]
        gram += block @ block.T
    return mean, gram


def sparse_gram(matrix: sparse.csr_array) -> np.ndarray:
    """X X^T of a sparse X, its columns split by how many rows they appear in: those in more than `HOT_SHARE` of
    the rows (a common n-gram's embedding row, which every client changes) as a dense block multiplied by BLAS,
    the rest as a sparse product. A sparse product alone is quadratic in each column's entries."""
    n, d = matrix.shape
    counts = np.bincount(matrix.indices, minlength=d)
    hot = np.flatnonzero(counts > HOT_SHARE * n)
    position = np.full(d, -1)
    position[hot] = np.arange(len(hot))
    is_hot = position[matrix.indices] >= 0
    block = np.zeros((n, len(hot)))
    rows = np.repeat(np.arange(n), np.diff(matrix.indptr))
    block[rows[is_hot], position[matrix.indices[is_hot]]] = matrix.data[is_hot]
    cold = sparse.csr_array(  # its own index arrays: eliminate_zeros rewrites them in place
        (np.where(is_hot, 0.0, matrix.data), matrix.indices.copy(), matrix.indptr.copy()), shape=(n, d)
    )
    cold.eliminate_zeros()
    return block @ block.T + (cold @ cold.T).toarray()


def centred_along(matrix: Matrix, mean: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """<direction, x_i - mean> for every row x_i."""
    if sparse.issparse(matrix):
        return matrix @ direction - mean @ direction
    along = np.zeros(matrix.shape[0])
    for at in range(0, matrix.shape[1], BLOCK):
        along += (matrix[:, at : at + BLOCK].astype(np.float64) - mean[at : at + BLOCK]) @ direction[at : at + BLOCK]
    return along


def row(matrix: Matrix, i: int) -> np.ndarray:
    """Row i, dense float64."""
    if sparse.issparse(matrix):
        return matrix[[i]].toarray().ravel()
    return matrix[i].astype(np.float64)


def row_norms(matrix: Matrix) -> np.ndarray:
    """Each row's Euclidean norm, accumulated in float64."""
    if sparse.issparse(matrix):
        return np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    squares = np.zeros(len(matrix))
    for at in range(0, matrix.shape[1], BLOCK):
        block = matrix[:, at : at + BLOCK].astype(np.float64)
        squares += np.einsum("ij,ij->i", block, block)
    return np.sqrt(squares)


def distances_to(matrix: Matrix, point: np.ndarray) -> np.ndarray:
    """|x_i - point| for every row x_i (sparse: from |x_i|^2 - 2 <x_i, point> + |point|^2)."""
    if sparse.issparse(matrix):
        squares = row_norms(matrix) ** 2 - 2 * (matrix @ point) + point @ point
        return np.sqrt(np.maximum(squares, 0.0))
    return np.linalg.norm(matrix.astype(np.float64) - point, axis=1)


def combine(weights: np.ndarray, matrix: Matrix) -> np.ndarray:
    """sum_i weights_i x_i, dense float64."""
    if sparse.issparse(matrix):
        return matrix.T @ weights
    return weights @ matrix.astype(np.float64)


def squared_distances(gram: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances of rows from their (centred) Gram matrix, clipped at 0."""
    norms = np.diag(gram)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0.0)

"""A round's updates as one matrix: a row per client, a column per floating weight of the model.

The omniscient attacks and the robust aggregators act on update vectors, u = w - g (a client's weights minus the
global model it trained from), as their papers define them; integer buffers are not weights and stay the global's.
Pairwise distances come from the Gram matrix of the updates centred on their mean, accumulated in float64 over
column blocks: exact to float64 rounding, and a bounded amount of extra memory whatever the model's size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLOCK = 1 << 12  # columns per block of the float64 accumulations: a block of a round's rows stays in cache


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


def centred_gram(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the column mean, the Gram matrix of the rows minus that mean), both float64."""
    n, d = matrix.shape
    mean = matrix.mean(axis=0, dtype=np.float64)
    gram = np.zeros((n, n))
    for at in range(0, d, BLOCK):
        block = matrix[:, at : at + BLOCK].astype(np.float64) - mean[at : at + BLOCK]
        gram += block @ block.T
    return mean, gram


def squared_distances(gram: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances of rows from their (centred) Gram matrix, clipped at 0."""
    norms = np.diag(gram)
    return np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0.0)

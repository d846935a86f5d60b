"""A round's updates as a matrix (fedsim.byzantine.vectors): round trips, integer buffers left alone, and a sparse
matrix giving what the dense one does."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.random_updates import SHAPES, assert_close, vectors
from scipy import sparse

from fedsim.byzantine import aggregators, omniscient
from fedsim.byzantine.vectors import sparse_updates, updates, weights_from


def test_update_vectors_round_trip_and_leave_integer_buffers():
    start = [np.ones((3, 2), np.float32), np.arange(4), np.zeros(2, np.float32)]
    rows = [[s + i if s.dtype.kind == "f" else s for s in start] for i in range(3)]
    matrix = updates(rows, start)
    assert matrix.shape == (3, 8) and np.array_equal(matrix[:, 0], [0, 1, 2])
    rebuilt = weights_from(matrix[2], start)
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(rebuilt, rows[2]))


def sparse_vectors(n: int, d: int) -> np.ndarray:
    """Vectors most of whose entries are zero, as a cross-device round's updates are, but for a few columns that
    every vector changes (a common n-gram's row)."""
    x = vectors(n, d)
    rare = np.random.default_rng(n).random((n, d)) < 0.97
    rare[:, : d // 50] = False
    x[rare] = 0.0
    return x


@pytest.mark.parametrize(("n", "d"), SHAPES[:2])
def test_a_sparse_matrix_gives_what_the_dense_one_does(n, d):
    """Every attack and rule takes the sparse form of the update matrix (fedsim.byzantine.vectors) and gives the
    dense form's result."""
    dense = sparse_vectors(n, d)
    held = sparse.csr_array(dense)
    f = n // 4
    pairs = [
        lambda x: omniscient.alie(x, 1.5),
        lambda x: omniscient.ipm(x, 0.5),
        lambda x: omniscient.mimic(x, None),
        lambda x: omniscient.mimic(x, 1),
        *[
            lambda x, o=o, p=p, b=b: omniscient.agr_agnostic(x, p, o, 1e-6, b)[0]
            for o, b in (("minmax", "max"), ("minsum", "min"), ("minsum", "max"))
            for p in omniscient.DIRECTIONS
        ],
        lambda x: aggregators.centered_clipping(x, np.full(d, 0.1), 1.0, 3),
        lambda x: aggregators.geometric_median(x, 1e-6, 5, np.arange(1, n + 1) / n),
        lambda x: aggregators.multi_krum(x, f, n - f),
        lambda x: aggregators.multi_krum(x, f, 3, np.arange(1.0, n + 1)),
        lambda x: aggregators.nnm(x, f),
        lambda x: aggregators.bucketing(x, 3, np.random.default_rng(0).permutation(n)),
        lambda x: aggregators.arc(x, f),
    ]
    for step in pairs:
        ours, theirs = step(held), step(dense)
        ours = ours.toarray() if sparse.issparse(ours) else ours
        assert_close(ours, theirs)


def test_a_rounds_replies_become_a_sparse_matrix_only_when_few_weights_changed():
    start = [np.zeros((100, 4), np.float32), np.zeros(2, np.float32)]
    few = [[(np.array([3, 7]), np.ones((2, 4), np.float32)), (None, np.ones(2, np.float32))]]
    matrix = sparse_updates(few, start)
    expected = updates([[weights_from(np.zeros(402), start)[0] + np.isin(np.arange(100), [3, 7])[:, None], np.ones(2)]],
                       start)  # fmt: skip
    assert sparse.issparse(matrix) and np.array_equal(matrix.toarray(), expected)

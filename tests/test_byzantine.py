"""The omniscient attacks and the robust aggregators against code no one here wrote (ByzFL 0.0.11) on random inputs,
and Min-Max's and Min-Sum's defining property where ByzFL has neither: within 1e-6 relative, n from 5 to 50, f up to
the largest each method allows, d up to 10^5."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.byzfl import byzfl
from scipy import sparse

from fedsim.byzantine import aggregators, attacks
from fedsim.byzantine.vectors import sparse_updates, updates, weights_from

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


def fs(n: int, largest: int) -> list[int]:
    return sorted({0, 1, n // 4, largest})


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_alie_ipm_and_mimic_match_byzfl(n, d):
    lib = byzfl("attacks.attacks")
    honest = vectors(n, d)
    for z in (0.3, 1.5, -1.0):
        assert_close(attacks.alie(honest, z), lib.ALittleIsEnough(tau=z)(honest))
    for epsilon in (0.1, 100.0):
        assert_close(attacks.ipm(honest, epsilon), lib.InnerProductManipulation(tau=epsilon)(honest))
    for target in (0, n // 2, n - 1):
        assert_close(attacks.mimic(honest, target), lib.Mimic(epsilon=target)(honest))


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_centered_clipping_matches_byzfl_round_after_round(n, d):
    """ByzFL's CenteredClipping keeps its centre from call to call, as fedsim's strategy keeps it from round to
    round: two rounds, the second centred on the first's result."""
    lib = byzfl("aggregators.aggregators")
    for tau, iterations in ((0.5, 1), (10.0, 3), (1e4, 2)):
        theirs = lib.CenteredClipping(L=iterations, tau=tau)
        center = np.zeros(d)
        for round_seed in (1, 2):
            x = vectors(n, d, round_seed)
            center = aggregators.centered_clipping(x, center, tau, iterations)
            assert_close(center, theirs(x))


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_geometric_median_matches_byzfl(n, d):
    lib = byzfl("aggregators.aggregators")
    x = vectors(n, d)
    for nu, iterations in ((0.1, 3), (1e-6, 10)):
        assert_close(aggregators.geometric_median(x, nu, iterations), lib.GeometricMedian(nu=nu, T=iterations)(x))


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_pre_aggregation_matches_byzfl(n, d):
    lib = byzfl("aggregators.preaggregators")
    x = vectors(n, d)
    for f in fs(n, n - 1):  # ByzFL's NNM allows f < n
        assert_close(aggregators.nnm(x, f), lib.NNM(f=f)(x.copy()))
    for f in fs(n, n):  # ByzFL's ARC allows f <= n
        assert_close(aggregators.arc(x, f), lib.ARC(f=f)(x.copy()))
    for s in sorted({1, 2, 3, n}):
        np.random.seed(s)  # ByzFL's bucketing shuffles with NumPy's global generator
        theirs = lib.Bucketing(s=s)(x)
        np.random.seed(s)
        assert_close(aggregators.bucketing(x, s, np.random.permutation(n)), theirs)


def test_weighted_geometric_median_is_the_weighted_weiszfeld_fixed_point():
    """RFA weighs clients by alpha_i (ByzFL does not): with many iterations and a tiny nu, the result z is where the
    weighted Weiszfeld step stays, sum_i alpha_i (x_i - z) / |x_i - z| = 0."""
    x = vectors(9, 40)
    alpha = np.arange(1, 10) / 45
    z = aggregators.geometric_median(x, 1e-12, 2000, alpha)
    pull = (alpha[:, None] * (x - z) / np.linalg.norm(x - z, axis=1)[:, None]).sum(axis=0)
    assert np.linalg.norm(pull) < 1e-6


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("direction", attacks.DIRECTIONS)
@pytest.mark.parametrize("objective", ["minmax", "minsum"])
def test_min_max_and_min_sum_stop_at_their_constraints_boundary(n, d, direction, objective):
    """Shejwalkar & Houmansadr's defining property, computed here directly from the vectors: the constraint holds at
    the chosen gamma and fails just past it."""
    honest = vectors(n, d)
    tolerance = 1e-6
    forged, gamma = attacks.agr_agnostic(honest, direction, objective, tolerance)
    mean = honest.mean(axis=0)
    p = (forged - mean) / gamma
    pairwise = np.array([np.sum((honest - h) ** 2, axis=1) for h in honest])

    def holds(g: float) -> bool:
        to_honest = np.sum((honest - (mean + g * p)) ** 2, axis=1)
        if objective == "minmax":
            return to_honest.max() <= pairwise.max() * (1 + 1e-12)
        return to_honest.sum() <= pairwise.sum(axis=1).max() * (1 + 1e-12)

    assert gamma > 0 and holds(gamma) and not holds(gamma * (1 + 4 * tolerance))
    expected = {
        "unit_vec": -mean / np.linalg.norm(mean),
        "std": -honest.std(axis=0, ddof=1),
        "sign": -np.sign(mean),
    }[direction]
    assert_close(p, expected)


def test_alie_z_is_the_papers_z_max():
    """Baruch et al.: s = floor(n/2 + 1) - f, z_max = Phi^-1((n - s) / n), by hand: the study's n = 25, f = 5 give
    s = 8 and Phi^-1(0.68); n = 50, f = 24 give s = 2 and Phi^-1(0.96)."""
    assert attacks.alie_z(25, 5) == pytest.approx(0.467699, abs=1e-6)
    assert attacks.alie_z(50, 24) == pytest.approx(1.750686, abs=1e-6)


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
        lambda x: attacks.alie(x, 1.5),
        lambda x: attacks.ipm(x, 0.5),
        lambda x: attacks.mimic(x, None),
        lambda x: attacks.mimic(x, 1),
        *[
            lambda x, o=o, p=p: attacks.agr_agnostic(x, p, o)[0]
            for o in ("minmax", "minsum")
            for p in attacks.DIRECTIONS
        ],
        lambda x: aggregators.centered_clipping(x, np.full(d, 0.1), 1.0, 3),
        lambda x: aggregators.geometric_median(x, 1e-6, 5, np.arange(1, n + 1) / n),
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

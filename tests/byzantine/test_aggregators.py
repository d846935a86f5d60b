"""The robust aggregators (fedsim.byzantine.aggregators) against ByzFL 0.0.11 and Flower's Krum, code no one here
wrote, on random inputs, and the geometric median's fixed point: within 1e-6 relative, n from 5 to 50, d up to
10^5."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp.strategy.multikrum import select_multikrum
from helpers.byzfl import byzfl
from helpers.random_updates import SHAPES, assert_close, vectors
from helpers.runs import ROOT
from scipy import sparse
from scipy.optimize import minimize

from fedsim.byzantine import aggregators
from fedsim.byzantine.vectors import centred_gram, squared_distances


def fs(n: int, largest: int) -> list[int]:
    return sorted({0, 1, n // 4, largest})


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
def test_geometric_median_matches_byzfl_from_the_same_start(n, d):
    """ByzFL's GeometricMedian starts Weiszfeld at zero, fedsim at RFA's start, the (here uniform) mean. Weiszfeld's
    step commutes with a translation of every vector and of z, so ByzFL run on the vectors minus their mean, plus
    that mean, is ByzFL's own formula started from the mean: the same iterations as fedsim's, computed by ByzFL."""
    lib = byzfl("aggregators.aggregators")
    x = vectors(n, d)
    mean = x.mean(axis=0)
    for nu, iterations in ((0.1, 3), (1e-6, 10)):
        theirs = lib.GeometricMedian(nu=nu, T=iterations)(x - mean) + mean
        assert_close(aggregators.geometric_median(x, nu, iterations), theirs)


@pytest.mark.parametrize("held", [np.asarray, sparse.csr_array], ids=["dense", "sparse"])
def test_geometric_median_with_zero_updates_is_within_1pct_of_the_converged_one(held):
    """5 clients that return the model they were sent (updates of exactly zero) among 25, weighted by examples: with
    the strategy's defaults (conf/strategy/geometric_median.yaml), fedsim's geometric median is within 1% (relative
    L2) of the weighted geometric median argmin_z sum_i a_i |z - x_i|, found here by SciPy's L-BFGS-B. From z = 0,
    Weiszfeld would stay near zero (each zero update's weight a_i / nu outweighs the rest); it starts at the
    weighted mean, RFA's start."""
    defaults = yaml.safe_load((ROOT / "conf" / "strategy" / "geometric_median.yaml").read_text())
    rng = np.random.default_rng(45)
    d = 1000
    x = np.vstack([np.zeros((5, d)), rng.normal(0.3, 1.0, d) + rng.normal(0, 1.0, (20, d))])
    examples = rng.integers(20, 400, 25).astype(np.float64)
    a = examples / examples.sum()

    def objective(z: np.ndarray) -> tuple[float, np.ndarray]:
        norms = np.linalg.norm(z - x, axis=1)
        return float(a @ norms), (a / norms) @ (z - x)

    converged = minimize(
        objective, np.median(x, axis=0), jac=True, method="L-BFGS-B", options={"ftol": 1e-15, "gtol": 1e-12}
    )
    assert np.linalg.norm(converged.jac) < 1e-6  # the reference is the minimum: its gradient vanishes
    ours = aggregators.geometric_median(held(x), defaults["nu"], defaults["iterations"], a)
    assert np.linalg.norm(ours - converged.x) <= 0.01 * np.linalg.norm(converged.x)
    np.testing.assert_allclose(aggregators.geometric_median(held(x), defaults["nu"], 0, a), a @ x)  # the start


def contents_of(x: np.ndarray) -> list[RecordDict]:
    """Each vector as the content of a reply, as Flower's selection rules take them."""
    return [RecordDict({"arrays": ArrayRecord({"w": Array(v)})}) for v in x]


def positions(chosen: list[RecordDict], contents: list[RecordDict]) -> list[int]:
    return [next(i for i, c in enumerate(contents) if c is pick) for pick in chosen]


def distances_of(x: np.ndarray) -> np.ndarray:
    return squared_distances(centred_gram(x)[1])


@pytest.mark.parametrize(("n", "d"), [(15, 10), (19, 50), (25, 1000), (31, 200)])
def test_recursive_krum_is_flowers_krum_applied_to_what_remains(n, d):
    """Bulyan's selection (El Mhamdi et al., 2018), by its definition: Flower's Krum (`select_multikrum` with one node
    to select) on the replies not yet chosen, its pick removed, theta = n - 2f times, gives the same picks in the same
    order. f from 3: with n_r - f - 2 <= 1 neighbours (f <= 2, the last picks) a mutually nearest pair ties exactly,
    and Flower breaks that tie by the rounding of its float distances, fedsim by taking the earlier reply."""
    for f in range(3, (n - 3) // 4 + 1):
        for seed in range(3):
            x = vectors(n, d, seed)
            contents, theta = contents_of(x), n - 2 * f
            remaining, theirs = list(contents), []
            while len(theirs) < theta:
                pick = select_multikrum(remaining, num_malicious_nodes=f, num_nodes_to_select=1)[0]
                theirs.append(pick)
                remaining = [c for c in remaining if c is not pick]
            assert aggregators.recursive_krum(distances_of(x), f, theta) == positions(theirs, contents)


def test_recursive_and_one_shot_selections_differ():
    """The paper's recursion and Flower's one Multi-Krum scoring (its theta best) select different sets here: the
    removal of each pick changes the others' nearest neighbours and so their scores."""
    n, f = 25, 5
    differ = 0
    for seed in range(5):
        x = vectors(n, 1000, seed)
        recursive = set(aggregators.recursive_krum(distances_of(x), f, n - 2 * f))
        contents = contents_of(x)
        one_shot = set(positions(select_multikrum(contents, f, n - 2 * f), contents))
        differ += recursive != one_shot
    assert differ >= 1


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_unweighted_multi_krum_matches_byzfl(n, d):
    """ByzFL's MultiKrum(f') scores each vector over its n - f' - 1 nearest and averages the n - f' best; fedsim
    scores over n - f - 2 (the paper's count, Flower's), so fedsim with f = f' - 1, m = n - f' and the plain mean
    is ByzFL(f')."""
    lib = byzfl("aggregators.aggregators")
    x = vectors(n, d)
    for f_byzfl in sorted({1, n // 4, (n - 1) // 2}):
        theirs = lib.MultiKrum(f=f_byzfl)(x)
        assert_close(aggregators.multi_krum(x, f_byzfl - 1, n - f_byzfl), theirs)


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

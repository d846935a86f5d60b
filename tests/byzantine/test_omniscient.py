"""The omniscient attacks (fedsim.byzantine.omniscient) against ByzFL 0.0.11, code no one here wrote, on random
inputs, and Min-Max's and Min-Sum's defining property where ByzFL has neither: within 1e-6 relative, n from 5 to
50, f up to the largest each method allows, d up to 10^5."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.byzfl import byzfl
from helpers.random_updates import SHAPES, assert_close, vectors

from fedsim.byzantine import omniscient


@pytest.mark.parametrize(("n", "d"), SHAPES)
def test_alie_ipm_and_mimic_match_byzfl(n, d):
    lib = byzfl("attacks.attacks")
    honest = vectors(n, d)
    for z in (0.3, 1.5, -1.0):
        assert_close(omniscient.alie(honest, z), lib.ALittleIsEnough(tau=z)(honest))
    for epsilon in (0.1, 100.0):
        assert_close(omniscient.ipm(honest, epsilon), lib.InnerProductManipulation(tau=epsilon)(honest))
    for target in (0, n // 2, n - 1):
        assert_close(omniscient.mimic(honest, target), lib.Mimic(epsilon=target)(honest))


@pytest.mark.parametrize(("n", "d"), SHAPES)
@pytest.mark.parametrize("direction", omniscient.DIRECTIONS)
@pytest.mark.parametrize(("objective", "bound"), [("minmax", "max"), ("minsum", "min"), ("minsum", "max")])
def test_min_max_and_min_sum_stop_at_their_constraints_boundary(n, d, direction, objective, bound):
    """Shejwalkar & Houmansadr's defining property, computed here directly from the vectors: the constraint holds at
    the chosen gamma and fails just past it. Min-Sum's bound: the smallest honest sum of squared distances (the
    authors' code) or the largest (the paper's text)."""
    honest = vectors(n, d)
    tolerance = 1e-6
    forged, gamma = omniscient.agr_agnostic(honest, direction, objective, tolerance, bound)
    mean = honest.mean(axis=0)
    p = (forged - mean) / gamma
    pairwise = np.array([np.sum((honest - h) ** 2, axis=1) for h in honest])
    sums = pairwise.sum(axis=1)

    def holds(g: float) -> bool:
        to_honest = np.sum((honest - (mean + g * p)) ** 2, axis=1)
        if objective == "minmax":
            return to_honest.max() <= pairwise.max() * (1 + 1e-12)
        return to_honest.sum() <= (sums.min() if bound == "min" else sums.max()) * (1 + 1e-12)

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
    assert omniscient.alie_z(25, 5) == pytest.approx(0.467699, abs=1e-6)
    assert omniscient.alie_z(50, 24) == pytest.approx(1.750686, abs=1e-6)

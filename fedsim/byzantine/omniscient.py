"""The omniscient, colluding attacks: what the f malicious clients of a round submit, computed from that round's
honest updates (a (h, d) matrix, fedsim.byzantine.vectors) and the round's cohort size n. Every malicious client
of the round submits the same update. Formulas, papers and conventions: docs/explanation/byzantine.md.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import norm

from fedsim.byzantine.vectors import (
    Matrix,
    centred_along,
    centred_gram,
    column_mean,
    column_std,
    row,
    squared_distances,
)

DIRECTIONS = ("unit_vec", "std", "sign")  # Min-Max's and Min-Sum's perturbations: -mu/|mu|, -std, -sign(mu)
BOUNDS = ("min", "max")  # Min-Sum's bound on the sum of squared distances: the smallest honest one, or the largest


def alie_z(n: int, f: int) -> float:
    """Baruch et al. (2019)'s z_max: s = floor(n/2 + 1) - f honest clients must side with the attackers for a
    majority, and z = Phi^-1((n - s) / n). With f past half (s < 1) it is taken at s = 1."""
    s = max(1, n // 2 + 1 - f)
    return float(norm.ppf((n - s) / n))


def alie(honest: Matrix, z: float) -> np.ndarray:
    """A Little Is Enough (Baruch, Baruch & Goldberg, NeurIPS 2019): mean + z * std, per coordinate, std with ddof 1
    (ByzFL's convention). One honest update has no spread: its mean is returned."""
    mean = column_mean(honest)
    if honest.shape[0] < 2:
        return mean
    return mean + z * column_std(honest, mean)


def ipm(honest: Matrix, epsilon: float) -> np.ndarray:
    """Inner-product manipulation (Xie et al., 2020): -epsilon times the honest mean."""
    return -epsilon * column_mean(honest)


def perturbation(honest: Matrix, mean: np.ndarray, direction: str) -> np.ndarray:
    """Shejwalkar & Houmansadr (2021)'s perturbation p: the inverse unit vector -mu/|mu|, the inverse standard
    deviation -std (ddof 1), or the inverse sign -sign(mu)."""
    if direction == "unit_vec":
        size = np.linalg.norm(mean)
        return -mean / size if size else np.zeros_like(mean)
    if direction == "std":
        return -column_std(honest, mean) if honest.shape[0] > 1 else np.zeros_like(mean)
    if direction == "sign":
        return -np.sign(mean)
    raise ValueError(f"direction {direction!r}; allowed: {', '.join(DIRECTIONS)}")


def largest_gamma(holds: Callable[[float], bool], tolerance: float) -> float:
    """The largest gamma >= 0 at which the attack's constraint holds, to within `tolerance` (relative).

    The paper's search halves its step toward the boundary from an initial gamma; here the initial bracket is found
    first, gamma doubling from 1 until the constraint fails, so the boundary is found wherever it lies. Each
    constraint is a convex quadratic in gamma that holds at 0, so the set where it holds is an interval from 0.
    """
    low, high = 0.0, 1.0
    while holds(high):
        low, high = high, 2 * high
        if high > 1e30:  # a zero perturbation: every gamma holds, and none changes the update
            return low
    while high - low > tolerance * high:
        middle = (low + high) / 2
        low, high = (middle, high) if holds(middle) else (low, middle)
    return low


def agr_agnostic(
    honest: Matrix, direction: str, objective: str, tolerance: float = 1e-6, bound: str = "max"
) -> tuple[np.ndarray, float]:
    """Min-Max or Min-Sum (Shejwalkar & Houmansadr, NDSS 2021): (mu + gamma * p, gamma) with the largest gamma that
    keeps the malicious update m no farther from the honest ones than they are from each other:

    - minmax: max_i |m - x_i|^2 <= max_ij |x_i - x_j|^2 (`bound` max, its only one);
    - minsum: sum_i |m - x_i|^2 <= min_i sum_j |x_i - x_j|^2 with `bound` min, the authors' code
      (github.com/vrt1shjwlkr/NDSS21-Model-Poisoning, `min_score = torch.min(scores)`), or <= max_i ... with
      `bound` max, as the paper's text reads.

    With y_i = x_i - mu: |m - x_i|^2 = |y_i|^2 - 2 gamma <p, y_i> + gamma^2 |p|^2, so every gamma costs O(h) once
    |y_i|^2 and <p, y_i> are known; max_ij |x_i - x_j|^2 comes from the centred Gram matrix, and
    sum_j |x_i - x_j|^2 = h |y_i|^2 + sum_j |y_j|^2 (the y_j sum to zero).
    """
    if bound not in BOUNDS or (objective == "minmax" and bound != "max"):
        raise ValueError(f"bound {bound!r} with {objective}; allowed: max for minmax, min or max for minsum")
    mean, gram = centred_gram(honest)
    p = perturbation(honest, mean, direction)
    along = centred_along(honest, mean, p)  # <p, y_i>
    spread, size = np.diag(gram), float(p @ p)

    def distances(gamma: float) -> np.ndarray:
        return spread - 2 * gamma * along + gamma * gamma * size

    if objective == "minmax":
        limit = float(squared_distances(gram).max())
        gamma = largest_gamma(lambda g: float(distances(g).max()) <= limit, tolerance)
    elif objective == "minsum":
        sums = honest.shape[0] * spread + spread.sum()
        limit = float(sums.min() if bound == "min" else sums.max())
        gamma = largest_gamma(lambda g: float(distances(g).sum()) <= limit, tolerance)
    else:
        raise ValueError(f"objective {objective!r}; allowed: minmax, minsum")
    return mean + gamma * p, gamma


def mimic(honest: Matrix, target: int | None) -> np.ndarray:
    """Mimic (Karimireddy, He & Jaggi, ICLR 2022): every attacker copies one honest update. `target` picks it by
    position (ByzFL's epsilon); None picks, as the paper does, the honest update farthest along the honest updates'
    top principal direction, the one that most over-represents a direction of heterogeneity (here recomputed
    each round from that round's updates: the centred Gram matrix's top eigenvector u, and argmax_i |u_i|)."""
    if target is None:
        _, gram = centred_gram(honest)
        _, vectors = np.linalg.eigh(gram)
        target = int(np.argmax(np.abs(vectors[:, -1])))
    return row(honest, min(target, honest.shape[0] - 1))

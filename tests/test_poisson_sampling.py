"""Poisson sampling of clients (strategy.sampling=poisson, in progress: docs to come with it): each client takes part
independently with probability q, reproducibly from (seed, round)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fedsim.server.participation import TRAIN, choose_poisson


def test_poisson_cohorts_stay_within_binomial_bounds_and_are_reproducible():
    population, rate, rounds = 1000, 0.05, 400
    sizes = [len(choose_poisson(7, r, TRAIN, rate, population)) for r in range(1, rounds + 1)]
    low, high = stats.binom.ppf([5e-7, 1 - 5e-7], population, rate)
    assert all(low <= size <= high for size in sizes)  # each round's cohort, within 1 - 1e-6 of Binomial(N, q)
    total = sum(sizes)  # every round's draws together: Binomial(rounds x population, q)
    assert stats.binomtest(total, rounds * population, rate).pvalue > 1e-3
    counts = np.bincount(np.concatenate([choose_poisson(7, r, TRAIN, rate, population) for r in range(1, 401)]))
    assert stats.chisquare(counts, np.full(len(counts), counts.mean())).pvalue > 1e-3  # no client favoured
    assert choose_poisson(7, 3, TRAIN, rate, population) == choose_poisson(7, 3, TRAIN, rate, population)
    assert choose_poisson(7, 3, TRAIN, rate, population) != choose_poisson(8, 3, TRAIN, rate, population)


def test_a_round_may_have_no_clients_and_a_rate_outside_0_1_is_refused():
    assert any(choose_poisson(0, r, TRAIN, 0.01, 20) == [] for r in range(1, 50))
    assert choose_poisson(0, 1, TRAIN, 1.0, 20) == list(range(20))
    for rate in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="rate in"):
            choose_poisson(0, 1, TRAIN, rate, 20)

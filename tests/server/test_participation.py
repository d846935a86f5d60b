"""Poisson sampling of clients (strategy.sampling=poisson, docs/how-to/privacy.md): each client takes part
independently with probability q, reproducibly from (seed, round); a round may have none, and completes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from helpers.configs import QUICK, make_cfg
from helpers.runs import run_locally
from scipy import stats

from fedsim.privacy.accounting import epsilon
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


POISSON_RUN = [*QUICK, "num_rounds=3", "seed=3", "strategy.sampling=poisson", "strategy.fraction_train=0.25"]


def test_a_poisson_run_trains_whom_the_draw_chose_and_rounds_without_clients_complete(generated_imdb, tmp_path):
    """seed 3, q = 0.25 of 4 clients: round 1 draws one client, rounds 2 and 3 none. Without DP the model stays as
    it was; under DP it moves by the noise alone, and every round is a release."""
    cfg = make_cfg(f"data.path={generated_imdb}", *POISSON_RUN, "strategy.fraction_evaluate=0.5")
    run_locally(cfg, tmp_path / "plain")
    rounds = pd.read_csv(tmp_path / "plain" / "rounds.csv")
    clients = pd.read_csv(tmp_path / "plain" / "clients.csv")
    drawn = {r: choose_poisson(3, r, TRAIN, 0.25, 4) for r in (1, 2, 3)}
    assert [len(drawn[r]) for r in (1, 2, 3)] == [1, 0, 0]
    assert clients.groupby("round").client_id.apply(list).to_dict() == {1: drawn[1]}
    assert rounds.num_fit_clients.tolist() == [0, 1, 0, 0] and rounds.num_failures.tolist() == [0] * 4
    assert rounds.central_loss[1] != rounds.central_loss[0]
    assert rounds.central_loss[3] == rounds.central_loss[2] == rounds.central_loss[1]  # nothing to aggregate

    dp = make_cfg(f"data.path={generated_imdb}", *POISSON_RUN, "privacy=server_fixed", "privacy.noise_multiplier=0.01")
    run_locally(dp, tmp_path / "dp")
    private = pd.read_csv(tmp_path / "dp" / "rounds.csv")
    assert private.num_fit_clients.tolist() == [0, 1, 0, 0]
    assert private.central_loss[3] != private.central_loss[2] != private.central_loss[1]  # the noise alone
    expected = [epsilon(0.01, 1, 4, r, 1e-5, "poisson", "pld") for r in (1, 2, 3)]
    assert private.epsilon.tolist() == [0.0, *expected]
    info = json.loads((tmp_path / "dp" / "run.json").read_text())
    assert info["privacy_releases"] == 3 and info["accountant"] == "pld" and info["delta"] == 1e-5
    assert (info["privacy_sampling"], info["neighbouring_relation"]) == ("poisson", "add_or_remove_one")

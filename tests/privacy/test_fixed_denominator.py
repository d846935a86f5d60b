"""DP-FedAvg's fixed-denominator estimator under Poisson sampling (fedsim.privacy.fixed_denominator), against its
defining properties (McMahan et al., ICLR 2018): unbiased for the population's mean update, noise of std
z C / (q N) on every weight, the noise alone in a round without clients, and Andrew et al.'s adaptive norm
moving toward its quantile."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg
from scipy import stats

from fedsim.privacy.dp import WEIGHT_KEY
from fedsim.privacy.fixed_denominator import FixedDenominatorDP, KeepDenominator
from fedsim.server.participation import TRAIN, choose_poisson

DIM = 4


class NoGrid:
    def get_node_ids(self) -> list[int]:
        return list(range(100))


def wrapper(noise_multiplier: float, clipping_norm: float, expected: float, **adaptive) -> FixedDenominatorDP:
    inner = FedAvg(fraction_train=1.0, min_available_nodes=1)
    inner.weighted_by_key = WEIGHT_KEY
    return FixedDenominatorDP(inner, noise_multiplier, clipping_norm, expected, **adaptive)


def reply(weights: np.ndarray) -> Message:
    content = RecordDict(
        {"arrays": ArrayRecord({"w": Array(weights)}), "metrics": MetricRecord({WEIGHT_KEY: 1, "num-examples": 5})}
    )
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=1, message_type="train"))


def round_of(strategy: FixedDenominatorDP, current: np.ndarray, updates: list[np.ndarray]) -> np.ndarray:
    list(strategy.configure_train(1, ArrayRecord({"w": Array(current)}), ConfigRecord(), NoGrid()))
    aggregated, _ = strategy.aggregate_train(1, [reply(current + u) for u in updates])
    return aggregated["w"].numpy()


def test_the_fixed_denominator_estimate_is_unbiased_for_the_population_mean(task_identity):
    """No noise, no clipping (every norm below C): over many Poisson rounds the released update averages to the
    mean of all N clients' updates, within the estimator's own standard error."""
    population, rate, rounds = 40, 0.2, 1000  # a bias above 5% of the mean update is past 4.5 standard errors
    rng = np.random.default_rng(0)
    updates = rng.normal(1.0, 0.5, (population, DIM)).astype(np.float32)
    current = np.zeros(DIM, np.float32)
    strategy = wrapper(0.0, 100.0, rate * population)
    released = np.array(
        [
            round_of(strategy, current, [updates[i] for i in choose_poisson(1, r, TRAIN, rate, population)])
            for r in range(1, rounds + 1)
        ]
    )
    truth = updates.astype(np.float64).mean(axis=0)
    # Var of one release, per weight: sum_i q (1 - q) u_i^2 / (q N)^2
    se = np.sqrt(
        (rate * (1 - rate) * (updates.astype(np.float64) ** 2).sum(axis=0)) / (rate * population) ** 2 / rounds
    )
    z_scores = (released.mean(axis=0) - truth) / se
    assert np.all(np.abs(z_scores) < 4.5), z_scores


def test_each_weight_gets_noise_of_std_z_c_over_qn_and_a_round_without_clients_the_noise_alone(task_identity):
    z, c, expected = 2.0, 3.0, 12.5
    strategy = wrapper(z, c, expected)
    current = np.full(20000, 0.5, np.float32)
    np.random.seed(3)
    alone = round_of(strategy, current, []) - current
    assert alone.shape == current.shape and not np.any(alone == 0)
    std = z * c / expected  # 0.48, not z C / n_t (n_t = 0 here) nor Flower's z C / num_sampled_clients
    assert stats.chi2(len(alone)).sf(((alone / std) ** 2).sum()) > 1e-4  # not too much noise
    assert stats.chi2(len(alone)).cdf(((alone / std) ** 2).sum()) > 1e-4  # nor too little


def test_server_side_clipping_bounds_each_update_by_c_before_the_sum(task_identity):
    """Two clients whose updates are 10 C long: the release is (C + C) / (q N) along their direction."""
    strategy = wrapper(0.0, 1.0, 4.0)
    current = np.zeros(DIM, np.float32)
    direction = np.ones(DIM, np.float32) / 2  # unit norm
    released = round_of(strategy, current, [10 * direction, 10 * direction])
    np.testing.assert_allclose(released, 2 * direction / 4.0, rtol=1e-6)


def test_adaptive_norm_follows_the_unclipped_quantile(task_identity):
    """Andrew et al.: more updates clipped than the target wants, C grows; fewer, it shrinks (no count noise:
    clipped_count_stddev tiny, z 0)."""
    current = np.zeros(DIM, np.float32)
    big = [np.full(DIM, 5.0, np.float32)] * 8
    grows = wrapper(0.0, 1.0, 8.0, target_clipped_quantile=0.5, clipped_count_stddev=1e-9)
    round_of(grows, current, big)
    assert grows.clipping_norm == pytest.approx(np.exp(0.2 * 0.5))  # b = 0 unclipped, gamma = 0.5
    shrinks = wrapper(0.0, 100.0, 8.0, target_clipped_quantile=0.5, clipped_count_stddev=1e-9)
    round_of(shrinks, current, big)
    assert shrinks.clipping_norm == pytest.approx(100 * np.exp(-0.2 * 0.5))


def test_adding_or_removing_a_client_moves_the_noised_counts_mean_by_a_half(task_identity):
    """Andrew et al.'s shift: the noised sum Σ(b_i - ½) + N(0, σ_b²), read back from b̃ = sum / (q N) + ½, moves by
    +½ when an unclipped client joins and -½ when a clipped one does, the sensitivity z_Δ's split assumes
    (unshifted, the first would move it by 1). 20,000 draws a cohort: the mean's standard error is 0.007."""
    expected, draws = 20.0, 20_000
    strategy = wrapper(1.5, 1.0, expected, target_clipped_quantile=0.5, clipped_count_stddev=1.0)
    np.random.seed(0)

    def mean_sum(unclipped: int, cohort: int) -> float:
        return float(np.mean([(strategy.noised_fraction(unclipped, cohort) - 0.5) * expected for _ in range(draws)]))

    base = mean_sum(5, 10)
    assert mean_sum(6, 11) - base == pytest.approx(0.5, abs=0.04)  # an unclipped client added
    assert mean_sum(5, 11) - base == pytest.approx(-0.5, abs=0.04)  # a clipped one added
    assert mean_sum(4, 9) - base == pytest.approx(-0.5, abs=0.04)  # an unclipped one removed


def fixed_size(clients: int) -> DifferentialPrivacyServerSideFixedClipping:
    """Flower's fixed-size server-side wrapper without noise around KeepDenominator, as Privacy.wrap builds it."""
    inner = FedAvg(fraction_train=1.0, min_available_nodes=1)
    inner.weighted_by_key = WEIGHT_KEY
    return DifferentialPrivacyServerSideFixedClipping(KeepDenominator(inner, clients), 0.0, 100.0, clients)


def test_a_failed_client_in_a_fixed_size_dp_round_counts_as_a_zero_update(task_identity):
    """k = 4 sampled, 3 replied: the release is the sum of their updates over 4, as if the fourth sent zero,
    the denominator the noise z C / k was sized for; Flower's wrapper alone averages over the 3."""
    current = np.zeros(DIM, np.float32)
    updates = [np.full(DIM, v, np.float32) for v in (1.0, 2.0, 3.0)]
    np.testing.assert_allclose(round_of(fixed_size(4), current, updates), np.full(DIM, 6.0 / 4), rtol=1e-6)
    np.testing.assert_allclose(round_of(fixed_size(3), current, updates), np.full(DIM, 2.0), rtol=1e-6)


def test_a_full_fixed_size_round_passes_through_keep_denominator_untouched(task_identity):
    """Every sampled client replied: the replies reach the inner strategy as they came, so a run without failures
    gives bitwise the numbers it gave before KeepDenominator."""
    current = np.full(DIM, 0.1, np.float32)
    updates = [np.array([0.3, -0.7, 1e-3, 2.0], np.float32) * v for v in (1.0, 0.3, 7.0)]
    inner = FedAvg(fraction_train=1.0, min_available_nodes=1)
    inner.weighted_by_key = WEIGHT_KEY
    plain = DifferentialPrivacyServerSideFixedClipping(inner, 0.0, 100.0, 3)
    assert np.array_equal(round_of(fixed_size(3), current, updates), round_of(plain, current, updates))

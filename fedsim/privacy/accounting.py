"""ε of client-level DP after some rounds, from dp-accounting's PLD or RDP accountant (docs/how-to/privacy.md states
the assumptions; tests/privacy/test_accounting.py checks it against Opacus's accountants).
"""

from __future__ import annotations

import functools
import math

import numpy as np


def epsilon(
    noise_multiplier: float,
    sample_size: float,
    population: int,
    releases: int,
    delta: float,
    sampling: str = "without_replacement",
    accountant: str = "rdp",
) -> float:
    """ε after `releases` noisy averages with dp-accounting's PLD or RDP accountant.

    poisson: each client takes part with probability q = sample_size / population (its expected cohort over
    the population), add-or-remove-one neighbours (DP-FedAvg's model, McMahan et al. 2018); without_replacement:
    a fixed-size cohort, replace-one neighbours, whose sensitivity is twice the clipping norm, so the Gaussian's
    multiplier relative to it is half Flower's (RDP only: dp-accounting's PLD has no such event); none:
    add-or-remove-one, no amplification.
    """
    if releases == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    if accountant == "pld":
        return _pld_epsilon(noise_multiplier, sample_size, population, releases, delta, sampling)
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon  # only under DP: every run imports this module

    orders, rdp = _one_release(noise_multiplier, sample_size, population, sampling)
    return float(compute_epsilon(orders, releases * rdp, delta)[0])


def _event(noise_multiplier: float, sample_size: float, population: int, sampling: str):
    """One release as dp-accounting's event, and the neighbouring relation it is accounted under."""
    from dp_accounting import dp_event  # dp_accounting only under DP: every run imports this module
    from dp_accounting.privacy_accountant import NeighboringRelation  # only under DP

    if sampling == "without_replacement":
        gaussian = dp_event.GaussianDpEvent(noise_multiplier / 2)
        event = dp_event.SampledWithoutReplacementDpEvent(population, sample_size, gaussian)
        return event, NeighboringRelation.REPLACE_ONE
    gaussian = dp_event.GaussianDpEvent(noise_multiplier)
    if sampling == "poisson":
        return dp_event.PoissonSampledDpEvent(sample_size / population, gaussian), NeighboringRelation.ADD_OR_REMOVE_ONE
    return gaussian, NeighboringRelation.ADD_OR_REMOVE_ONE


PLD_INTERVAL = 1e-4  # dp-accounting's default discretization of the privacy loss
PLD_FINE_UP_TO = 10.0  # RDP's ε below which PLD keeps that default; above it, a coarser grid (see _pld_epsilon)


def _pld_epsilon(
    noise_multiplier: float, sample_size: float, population: int, releases: int, delta: float, sampling: str
) -> float:
    """dp-accounting's PLD ε. Its grid spans the privacy loss's range in steps of PLD_INTERVAL, so at little noise
    (ε in the hundreds) it held 15 GB and ran for minutes: from RDP's ε (an upper bound, computed in
    milliseconds) above PLD_FINE_UP_TO, the step grows in proportion. dp-accounting's discretization is
    pessimistic, so a coarser grid still gives an upper bound, only a looser one, where ε no longer means much."""
    from dp_accounting.pld import PLDAccountant  # only under DP

    event, relation = _event(noise_multiplier, sample_size, population, sampling)
    coarse = max(
        1.0, epsilon(noise_multiplier, sample_size, population, releases, delta, sampling, "rdp") / PLD_FINE_UP_TO
    )
    accountant = PLDAccountant(neighboring_relation=relation, value_discretization_interval=PLD_INTERVAL * coarse)
    if not accountant.supports(event):
        raise ValueError(f"dp-accounting's PLD accountant cannot account {sampling} sampling; use the RDP accountant")
    accountant.compose(event, releases)
    return float(accountant.get_epsilon(delta))


@functools.lru_cache(maxsize=8)
def _one_release(
    noise_multiplier: float, sample_size: float, population: int, sampling: str
) -> tuple[np.ndarray, np.ndarray]:
    """The RDP orders and one release's RDP at each: releases compose by adding RDP, and the sampled
    mechanism's RDP is slow to compute, so a run computes it once, not every round."""
    from dp_accounting.rdp import RdpAccountant  # only under DP

    event, relation = _event(noise_multiplier, sample_size, population, sampling)
    accountant = RdpAccountant(neighboring_relation=relation)
    accountant.compose(event)
    return accountant.orders, accountant.rdp

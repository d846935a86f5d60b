"""ε of Flower's DP after some rounds, from dp-accounting's RDP accountant (README, "Differential
privacy", states the assumptions).
"""

from __future__ import annotations

import functools
import math

import numpy as np


def epsilon(
    noise_multiplier: float,
    sample_size: int,
    population: int,
    releases: int,
    delta: float,
    sampling: str = "without_replacement",
) -> float:
    """ε after `releases` noisy averages with dp-accounting's RDP accountant.

    without_replacement: replace-one neighbours, whose sensitivity is twice the clipping norm, so the
    Gaussian's multiplier relative to it is half Flower's; none: add-or-remove-one, no amplification.
    """
    if releases == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon  # only under DP: every run imports this module

    orders, rdp = _one_release(noise_multiplier, sample_size, population, sampling)
    return float(compute_epsilon(orders, releases * rdp, delta)[0])


@functools.lru_cache(maxsize=8)
def _one_release(
    noise_multiplier: float, sample_size: int, population: int, sampling: str
) -> tuple[np.ndarray, np.ndarray]:
    """The RDP orders and one release's RDP at each: releases compose by adding RDP, and the sampled
    mechanism's RDP is slow to compute, so a run computes it once, not every round."""
    from dp_accounting import dp_event  # dp_accounting only under DP: every run imports this module
    from dp_accounting.privacy_accountant import NeighboringRelation  # only under DP
    from dp_accounting.rdp import RdpAccountant  # only under DP

    if sampling == "without_replacement":
        accountant = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
        event = dp_event.SampledWithoutReplacementDpEvent(
            population, sample_size, dp_event.GaussianDpEvent(noise_multiplier / 2)
        )
    else:
        accountant = RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
        event = dp_event.GaussianDpEvent(noise_multiplier)
    accountant.compose(event)
    return accountant.orders, accountant.rdp

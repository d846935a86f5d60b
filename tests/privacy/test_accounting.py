"""ε against Opacus's accountants (code no one here wrote), within 2% (issue 39's bound), for every configuration
in docs/how-to/privacy.md's tables: under Poisson sampling, Opacus's RDP accountant against dp-accounting's RDP
(they differ only in the orders they try) and its PRV accountant against dp-accounting's PLD (two numerical
accountants of the same privacy loss); for the 10-client table, where every client takes part every round, the
Gaussian mechanism itself (Opacus at sampling rate 1): noise z for add-or-remove-one, z / 2 for replace-one.
Opacus has no accountant for a fixed-size sample of a larger population without replacement (the cross_device
fixed-size table): dp-accounting's RDP is its only source there."""

from __future__ import annotations

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedsim.privacy.accounting import epsilon

# (noise multiplier, population, expected cohort, rounds): the cross_device preset under Poisson sampling (q = 0.1) at
# the docs' noise multipliers and rounds, and around it
DOCS_POISSON = [
    (z, 5000, 500, rounds)
    for z, rounds in [(3.95, 95), (3.95, 100), (3.1, 100), (2.25, 100), (1.39, 98), (1.39, 100), (0.94, 100)]
]
SETTINGS = [*DOCS_POISSON, (1.0, 5000, 500, 100), (0.8, 1000, 50, 200), (5.0, 5000, 250, 100)]


def opacus(accountant, noise_multiplier: float, rate: float, rounds: int, delta: float) -> float:
    accountant.history = [(noise_multiplier, rate, rounds)]
    if isinstance(accountant, PRVAccountant):  # its default error bound, 0.01 in ε, is 3% of the smallest ε here
        return float(accountant.get_epsilon(delta, eps_error=1e-3))
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize("noise_multiplier, population, cohort, rounds", SETTINGS)
def test_poisson_epsilon_equals_opacus(noise_multiplier, population, cohort, rounds):
    delta, rate = 1e-5, cohort / population
    rdp = epsilon(noise_multiplier, cohort, population, rounds, delta, "poisson", "rdp")
    pld = epsilon(noise_multiplier, cohort, population, rounds, delta, "poisson", "pld")
    assert rdp == pytest.approx(opacus(RDPAccountant(), noise_multiplier, rate, rounds, delta), rel=0.02)
    assert pld == pytest.approx(opacus(PRVAccountant(), noise_multiplier, rate, rounds, delta), rel=0.02)
    assert pld <= rdp  # PLD is tight, RDP an upper bound


@pytest.mark.parametrize("noise_multiplier", [0.01, 0.1, 1.0])
def test_full_participation_epsilon_is_the_gaussians_per_opacus(noise_multiplier):
    """The 10-client table: all 10 clients every round, 10 rounds. Without replacement (replace-one) the sum moves
    by up to 2C, a Gaussian of multiplier z / 2; with privacy.sampling=none (add-or-remove-one) by C."""
    delta, rounds = 1e-5, 10
    replace_one = epsilon(noise_multiplier, 10, 10, rounds, delta, "without_replacement", "rdp")
    add_remove = epsilon(noise_multiplier, 10, 10, rounds, delta, "none", "rdp")
    assert replace_one == pytest.approx(opacus(RDPAccountant(), noise_multiplier / 2, 1.0, rounds, delta), rel=0.02)
    assert add_remove == pytest.approx(opacus(RDPAccountant(), noise_multiplier, 1.0, rounds, delta), rel=0.02)
    assert epsilon(noise_multiplier, 10, 10, rounds, delta, "none", "pld") <= add_remove

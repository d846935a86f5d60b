"""ε under Poisson sampling of clients, against Opacus's accountants (code no one here wrote), within 2% (the
issue's bound): its RDP accountant against dp-accounting's RDP (they differ only in the orders they try), its PRV
accountant against dp-accounting's PLD (two numerical accountants of the same privacy loss)."""

from __future__ import annotations

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedsim.privacy.accounting import epsilon

# (noise multiplier, population, expected cohort, rounds): the cross_device preset (q = 0.1, 100 rounds) and around it
SETTINGS = [(3.1, 5000, 500, 100), (1.0, 5000, 500, 100), (0.8, 1000, 50, 200), (5.0, 5000, 250, 100)]


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

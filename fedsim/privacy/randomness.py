"""Where a DP run's noise and its cohort come from: `privacy.noise_source`.

`seeded` (the default in simulation): round t's noise comes from NumPy's global generator seeded with
(seed, t), and its cohort from (seed, round, purpose) (fedsim.server.participation). A run repeats, and resumes,
to the same numbers. The seed is in config.yaml and run.json, and whoever has it can recompute the noise,
subtract it from a released model, and name the clients that took part, which undoes the amplification by
sampling. A seeded run's ε therefore holds only while its seed stays secret: right for a simulation, where the
data are public and reproducibility is the point.

`secure` (the default under `runtime=deployment`, real clients): each round's noise generator, and under DP its
cohort's draw, are seeded with 128 bits of the operating system's entropy (`secrets`), recorded nowhere. The
limits: the Gaussian is still NumPy's (MT19937 under the global generator, Flower's noise; PCG64 for the
cohort), which is not a cryptographic generator, only seeded from one; and it samples in floating point, whose
rounding leaks a little about the noise (Mironov, CCS 2012, for the Laplace). Neither is repaired here. A
secure run cannot repeat itself: a resumed one carries on from its checkpoint with fresh noise, so it is not
bitwise equal to the same run uninterrupted.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np

from fedsim.config.validate import SECURE, SEEDED


def secret_seed() -> int:
    """128 bits of the operating system's entropy: a seed nobody can recompute, recorded nowhere."""
    return secrets.randbits(128)


@dataclass(frozen=True)
class NoiseSource:
    """The seed of each round's DP noise: the run's (seed, round) when `seeded`, fresh entropy when `secure`."""

    kind: str = SEEDED
    seed: int = 0

    @property
    def secure(self) -> bool:
        return self.kind == SECURE

    def seed_round(self, server_round: int) -> None:
        """Seed NumPy's global generator, which Flower's DP wrappers and fedsim's draw their noise from, for this
        round's aggregation."""
        if self.secure:
            np.random.seed(np.frombuffer(secrets.token_bytes(16), dtype=np.uint32))
        else:
            np.random.seed([self.seed % 2**32, server_round])

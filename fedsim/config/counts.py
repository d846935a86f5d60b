"""The client counts a config implies, in one place: how many clients train and evaluate per round, the
expected cohort under Poisson sampling, how many clients an attack makes malicious and how many of those a
round holds. Every part that needs a count (the runtimes' actor and node slots, the strategy's checks, the
privacy accountant, the archive's disk check, the benchmarks) reads it from `Counts.of(cfg)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omegaconf import DictConfig


def num_malicious(node_ratio: float, num_clients: int) -> int:
    """How many clients an attack of `attack.node_ratio` makes malicious: round(node_ratio x num_clients), halves
    rounded up (0.25 x 10 -> 3). conf/ reads it too (a robust strategy's f, fedsim.config.resolvers)."""
    return min(num_clients, int(math.floor(node_ratio * num_clients + 0.5 + 1e-9)))


@dataclass(frozen=True)
class Counts:
    """A run's client counts (see the module's docstring).

    `fit` and `evaluate` follow Flower's own formulas in FedAvg.configure_train and configure_evaluate:
    int(num_clients x fraction), at least the strategy's minimum, at most num_clients; a fraction_evaluate of
    0 evaluates no one. `expected` is q N under strategy.sampling=poisson (q = fraction_train), else None.
    """

    num_clients: int
    fit: int
    evaluate: int
    expected: float | None
    malicious: int

    @classmethod
    def of(cls, cfg: DictConfig) -> Counts:
        n, strategy = int(cfg.num_clients), cfg.strategy
        fit = min(n, max(int(n * strategy.get("fraction_train", 1.0)), int(strategy.get("min_train_nodes", 1))))
        fraction = strategy.get("fraction_evaluate", 1.0)
        evaluate = 0 if fraction == 0 else min(n, max(int(n * fraction), int(strategy.get("min_evaluate_nodes", 1))))
        poisson = strategy.get("sampling", "fixed") == "poisson"
        expected = float(strategy.fraction_train) * n if poisson else None
        attack = cfg.get("attack")
        malicious = num_malicious(float(attack.node_ratio), n) if attack is not None else 0
        return cls(num_clients=n, fit=fit, evaluate=evaluate, expected=expected, malicious=malicious)

    @property
    def cohort(self) -> float:
        """The cohort the accountant charges: the expected q N under Poisson sampling, else the fixed size."""
        return self.expected if self.expected is not None else self.fit

    @property
    def at_once(self) -> int:
        """The most clients a round sends messages to at once (training or evaluation), at least 1."""
        return max(1, self.fit, self.evaluate)

    @property
    def malicious_per_round(self) -> int:
        """How many of a round's `fit` clients are malicious: all of them under full participation, else the
        malicious share of the round rounded up."""
        if self.fit == self.num_clients:
            return self.malicious
        return min(self.malicious, self.fit, math.ceil(self.malicious * self.fit / self.num_clients))

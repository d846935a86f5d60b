"""Simulated faults: clients that drop out of a round, and slow devices (stragglers) against a round timeout.

Every draw comes from (seed, round, client), so a run's faults are the same on every rerun and
after a resume. Slowness runs on a simulated clock instead of costing real time: a client's
simulated time is its work (training examples x local epochs / `examples_per_s`, times `slowdown`
on a slow device) plus, on a slow device, an exponential delay with mean `delay_mean_s`. A
client whose simulated time exceeds `round_timeout_s` is late: it trained, but the server
aggregated without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DROPOUT, STRAGGLER, DELAY = 0xD0, 0x51, 0xDE  # separate random streams


@dataclass(frozen=True)
class Faults:
    """The `faults` config group (conf/faults/)."""

    name: str = "none"
    dropout: float = 0.0  # probability that a sampled client does not answer in a round
    stragglers: float = 0.0  # share of clients on slow devices (the same ones all run)
    slowdown: float = 1.0  # a slow device's work takes this many times as long
    delay_mean_s: float = 0.0  # plus an exponential delay with this mean, drawn per round
    examples_per_s: float = 1000.0  # a normal device's training speed, for the simulated clock
    round_timeout_s: float | None = None  # the server aggregates what arrived by then (simulated)
    max_failure_rate: float = 0.5  # above this share of failed training calls the run fails

    @property
    def clocked(self) -> bool:
        """Whether the simulated clock matters: slow devices or a round timeout."""
        return self.stragglers > 0 or self.round_timeout_s is not None

    def dropped(self, seed: int, server_round: int, partitions: Sequence[int]) -> list[int]:
        """The sampled partitions that do not answer this round."""
        if self.dropout <= 0:
            return []
        return [
            p for p in partitions if np.random.default_rng([seed, server_round, p, DROPOUT]).random() < self.dropout
        ]

    def slow_devices(self, seed: int, num_clients: int) -> set[int]:
        count = int(round(self.stragglers * num_clients))
        return {int(c) for c in np.random.default_rng([seed, STRAGGLER]).choice(num_clients, size=count, replace=False)}

    def sim_time(
        self, seed: int, server_round: int, client_id: int, num_examples: int, local_epochs: int, slow: bool
    ) -> float:
        """The client's simulated training time in this round, in seconds."""
        work = num_examples * local_epochs / self.examples_per_s
        if not slow:
            return work
        delay = (
            np.random.default_rng([seed, server_round, client_id, DELAY]).exponential(self.delay_mean_s)
            if self.delay_mean_s > 0
            else 0.0
        )
        return work * self.slowdown + float(delay)

    def late(self, sim_time: float) -> bool:
        return self.round_timeout_s is not None and sim_time > self.round_timeout_s

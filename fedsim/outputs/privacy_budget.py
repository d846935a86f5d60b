"""rounds.csv's epsilon and run.json's privacy budget."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fedsim.outputs.base import Callback, RoundMetrics
from fedsim.privacy.accounting import epsilon
from fedsim.privacy.dp import Privacy
from fedsim.server.record import RoundRecord


class PrivacyBudget(Callback):
    """rounds.csv's `epsilon` after every round, and run.json's epsilon, delta and what the accountant charged a
    round (fedsim.privacy.dp.Release); it also carries an adaptive wrapper's clipping norm across a resume."""

    round_metrics = ("epsilon",)

    def __init__(self, privacy: Privacy, wrapper: Any, num_clients: int, clients_per_round: float) -> None:
        """`clients_per_round`: the cohort's size, or under Poisson sampling its expected size q N."""
        self.privacy, self.wrapper = privacy, wrapper
        self.num_clients, self.clients_per_round = num_clients, clients_per_round
        self.release = privacy.release(wrapper)  # what the accountant charges a round
        self.releases = 0  # noisy averages so far

    @property
    def epsilon(self) -> float:
        return epsilon(
            self.release.noise_multiplier_effective,
            self.clients_per_round,
            self.num_clients,
            self.releases,
            self.privacy.delta,
            self.privacy.sampling,
            self.privacy.accountant,
        )

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        if saved:
            self.releases = int(saved["releases"])
            self.wrapper.clipping_norm = float(saved["clipping_norm"])

    def on_round_end(self, record: RoundRecord) -> RoundMetrics:
        # A fixed-size round with updates released a noisy average; under Poisson sampling every round does,
        # a round without clients its noise alone (fedsim.privacy.fixed_denominator).
        self.releases += record.server_round > 0 and (self.privacy.sampling == "poisson" or bool(record.clients))
        return {"epsilon": self.epsilon}

    def state(self) -> dict[str, Any]:
        return {"releases": self.releases, "clipping_norm": float(self.wrapper.clipping_norm)}

    def on_run_end(self, summary: dict[str, Any]) -> None:
        summary.update(
            epsilon=self.epsilon,
            delta=self.privacy.delta,
            privacy_releases=self.releases,
            privacy_sampling=self.privacy.sampling,
            neighbouring_relation=self.privacy.neighbouring_relation,
            accountant=self.privacy.accountant,
            **asdict(self.release),
        )

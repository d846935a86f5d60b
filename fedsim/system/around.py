"""A Flower strategy around another, for fedsim's wrappers that change only how training replies are aggregated
(DP's fixed denominators, the pre-aggregation steps): evaluation and the summary are the wrapped strategy's."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class Around(Strategy):
    """Hands evaluation and the summary to `self.strategy`, the strategy it wraps (fedsim.privacy.dp.inner_strategy
    walks down the same attribute); a subclass sets it and writes the training half."""

    strategy: Strategy

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()

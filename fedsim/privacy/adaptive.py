"""Adaptive clipping for a fixed-size cohort of k clients (Andrew et al., "Differentially Private Learning with
Adaptive Clipping", NeurIPS 2021), in the server (`ServerSideAdaptiveClipping`) or in the clients with Flower's
`adaptiveclipping_mod` (`ClientSideAdaptiveClipping`).

These are Flower 1.42's `DifferentialPrivacyServerSideAdaptiveClipping` and
`DifferentialPrivacyClientSideAdaptiveClipping`, step for step and draw for draw (the clipping, the noised
count, the noise on the aggregate, in Flower's order, with Flower's helpers), except for the step of the norm.
Flower's, C ← C · exp(-η (f̃ - γ)) with f̃ the noised fraction of updates *clipped*, shrinks the norm when most
updates are clipped, running away from the target quantile γ instead of toward it (Andrew et al. count the
updates *not* clipped). Here more clipped than `target_clipped_quantile` makes C grow: C ← C · exp(η (f̃ - γ)).
Flower has no setting for the sign, so fedsim writes the wrapper rather than override Flower's private step.

The noise follows Flower's: z_Δ and σ_b from Flower's `compute_adaptive_noise_params`, the noise on the average
of standard deviation z_Δ C / k with C the norm after the round's step. A round in which any client failed
releases nothing (Flower's rule for its DP wrappers); fedsim.privacy.fixed_denominator.KeepDenominator, inside,
keeps the denominator k for those that replied.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.differential_privacy import (
    KEY_CLIPPING_NORM,
    KEY_NORM_BIT,
    adaptive_clip_inputs_inplace,
    add_gaussian_noise_inplace,
    compute_adaptive_noise_params,
    compute_stdv,
)

from fedsim.system.around import Around


class _AdaptiveClipping(Around):
    """`strategy`'s average of k clipped updates plus Gaussian noise, its clipping norm following the target
    quantile of clipped updates; a subclass clips (in the server) or counts the clients' norm bits."""

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        num_sampled_clients: int,
        initial_clipping_norm: float,
        target_clipped_quantile: float = 0.5,
        clip_norm_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.num_sampled_clients = num_sampled_clients
        self.clipping_norm = initial_clipping_norm
        self.target_clipped_quantile = target_clipped_quantile
        self.clip_norm_lr = clip_norm_lr
        # Andrew et al.'s split of z between the update and the count; ValueError for a z the count cannot spare
        self.clipped_count_stddev, self.noise_multiplier = compute_adaptive_noise_params(
            noise_multiplier, num_sampled_clients, clipped_count_stddev
        )

    def follow_quantile(self, clipped: int, replies: int) -> None:
        """The norm's step toward the target: the noised fraction of clipped updates over the replies, as
        Flower draws it, with the sign that makes the norm grow when more are clipped than the target."""
        fraction = float(np.random.normal(clipped, self.clipped_count_stddev)) / float(replies)
        self.clipping_norm *= math.exp(self.clip_norm_lr * (fraction - self.target_clipped_quantile))

    @staticmethod
    def without_errors(replies: Iterable[Message]) -> list[Message] | None:
        """The round's replies, or None when one is an error: Flower's wrappers aggregate nothing then."""
        replies = list(replies)
        return None if any(reply.has_error() for reply in replies) else replies

    def noised(self, aggregated: ArrayRecord | None) -> ArrayRecord | None:
        """The aggregate plus noise of standard deviation z_Δ C / k on every weight."""
        if not aggregated:
            return aggregated
        weights = aggregated.to_numpy_ndarrays()
        add_gaussian_noise_inplace(
            weights, compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        )
        return ArrayRecord({k: Array(np.asarray(w)) for k, w in zip(aggregated.keys(), weights, strict=True)})


class ServerSideAdaptiveClipping(_AdaptiveClipping):
    """Each reply's update clipped in the server to the current norm, then averaged and noised."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.current_arrays = ArrayRecord()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_arrays = arrays
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = self.without_errors(replies)
        if replies is None:
            return None, None
        current = self.current_arrays.to_numpy_ndarrays()
        clipped = 0
        for reply in replies:
            for name, record in reply.content.array_records.items():
                update = [np.subtract(w, c) for w, c in zip(record.to_numpy_ndarrays(), current, strict=True)]
                clipped += int(adaptive_clip_inputs_inplace(update, self.clipping_norm))
                reply.content[name] = ArrayRecord(
                    {k: Array(np.asarray(c + u)) for k, c, u in zip(record.keys(), current, update, strict=True)}
                )
        self.follow_quantile(clipped, len(replies))
        aggregated, metrics = self.strategy.aggregate_train(server_round, replies)
        return self.noised(aggregated), metrics


class ClientSideAdaptiveClipping(_AdaptiveClipping):
    """Each client clips its update to the norm the round's config carries and reports whether it clipped
    (Flower's `adaptiveclipping_mod`); the server averages, counts the norm bits and noises."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[KEY_CLIPPING_NORM] = self.clipping_norm
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = self.without_errors(replies)
        if replies is None:
            return None, None
        bits = [
            next((m[KEY_NORM_BIT] for m in r.content.metric_records.values() if KEY_NORM_BIT in m), None)
            for r in replies
        ]
        if None in bits:
            raise ValueError(f"a training reply without `{KEY_NORM_BIT}`: its client did not clip")
        aggregated, metrics = self.strategy.aggregate_train(server_round, replies)
        self.follow_quantile(sum(int(bool(bit)) for bit in bits), len(replies))
        return self.noised(aggregated), metrics

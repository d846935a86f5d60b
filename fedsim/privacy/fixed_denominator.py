"""DP-FedAvg under Poisson sampling of clients: the fixed-denominator estimator (McMahan et al., "Learning
Differentially Private Recurrent Language Models", ICLR 2018, Algorithm 1 with the estimator f̃_f).

Each client takes part with probability q, so a round's cohort has a random size n_t, possibly 0. The
accountant's Poisson-subsampled Gaussian assumes the server releases

    Δ̃_t = (Σ_{i in cohort} clip_C(Δ_i) + N(0, z² C² I)) / (q N),

dividing by the expected cohort q N, which the data cannot move, and never by n_t, which one client's
presence moves by one. Flower's DP wrappers divide by the clients that replied (their inner strategy averages)
and size the noise by a fixed `num_sampled_clients`: right for a fixed-size cohort, not for this. This
wrapper hands its inner strategy each clipped update scaled by n_t / (q N), so the inner strategy's equal-weight
average is Σ clip_C(Δ_i) / (q N) (FedAdam and the other server optimizers then take their step from it), and
adds N(0, (z C / (q N))²) to every weight. A round without clients releases the noise alone.

Adaptive clipping (Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS 2021) is
run with the same denominator, each indicator shifted by -½ as in their paper and TF Privacy's
`QuantileEstimatorQuery`: the fraction of updates left unclipped is

    b̃ = (Σ_{i in cohort} (1[‖Δ_i‖ ≤ C] - ½) + N(0, σ_b²)) / (q N) + ½,

C ← C · exp(-η (b̃ - γ)), with γ = 1 - `target_clipped_quantile`. Adding or removing a client moves the noised
sum by ½, not 1, which is what the update's noise multiplier z_Δ = (z⁻² - (2 σ_b)⁻²)^(-1/2) assumes, so that the
update and the count together spend what z alone would (their Theorem 1). The clipping happens in the server
(server_* modes) or in each client, with Flower's clipping mods (client_* modes); either way the server sees the
norm bit or the update.

KeepDenominator does the same for a fixed-size cohort of k under Flower's wrappers, which size the noise for k
and average over the clients that replied: a client that failed counts as a zero update, so the average stays
the sum over k.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

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
)

from fedsim.system.around import Around


class FixedDenominatorDP(Around):
    """`strategy` as DP-FedAvg with the fixed denominator q N (`expected_clients`), clipping in the server or in
    the clients (`client_side`), at a fixed norm or, given `target_clipped_quantile`, an adaptive one."""

    def __init__(
        self,
        strategy: Strategy,
        noise_multiplier: float,
        clipping_norm: float,
        expected_clients: float,
        client_side: bool = False,
        target_clipped_quantile: float | None = None,
        clip_norm_lr: float = 0.2,
        clipped_count_stddev: float | None = None,
    ) -> None:
        super().__init__()
        if expected_clients <= 0:
            raise ValueError(f"the expected cohort q N must be positive, got {expected_clients}")
        self.strategy = strategy
        self.clipping_norm = clipping_norm
        self.expected_clients = expected_clients
        self.client_side = client_side
        self.target_unclipped = None if target_clipped_quantile is None else 1.0 - target_clipped_quantile
        self.clip_norm_lr = clip_norm_lr
        self.noise_multiplier = noise_multiplier
        self.clipped_count_stddev = 0.0
        if self.adaptive:  # Andrew et al.'s split of z between the update and the count (Flower's own helper)
            self.clipped_count_stddev, self.noise_multiplier = compute_adaptive_noise_params(
                noise_multiplier, expected_clients, clipped_count_stddev
            )
        self.current: list[np.ndarray] = []
        self.keys: list[str] = []

    @property
    def adaptive(self) -> bool:
        return self.target_unclipped is not None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current, self.keys = arrays.to_numpy_ndarrays(), list(arrays.keys())
        if self.client_side:  # what Flower's clipping mods clip to
            config[KEY_CLIPPING_NORM] = self.clipping_norm
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The inner strategy's aggregate of the scaled clipped updates, plus the noise; the noise alone on the
        round's model when no client replied."""
        answered = [r for r in replies if not r.has_error()]
        scale = len(answered) / self.expected_clients
        unclipped = 0
        for reply in answered:
            for name, record in reply.content.array_records.items():
                update = [np.subtract(w, c) for w, c in zip(record.to_numpy_ndarrays(), self.current, strict=True)]
                if self.client_side:
                    clipped = bool(reply.content["metrics"].get(KEY_NORM_BIT, False))
                else:
                    clipped = adaptive_clip_inputs_inplace(update, self.clipping_norm)
                unclipped += not clipped
                reply.content[name] = ArrayRecord(
                    {k: Array(np.asarray(c + scale * u)) for k, c, u in zip(record.keys(), self.current, update)}
                )
        aggregated, metrics = self.strategy.aggregate_train(server_round, answered) if answered else (None, None)
        weights = aggregated.to_numpy_ndarrays() if aggregated is not None else [c.copy() for c in self.current]
        add_gaussian_noise_inplace(weights, self.noise_std)
        if self.adaptive:
            self._follow_quantile(unclipped, len(answered))
        return ArrayRecord({k: Array(np.asarray(w)) for k, w in zip(self.keys, weights, strict=True)}), metrics

    @property
    def noise_std(self) -> float:
        """The noise on each weight of the released average: z C / (q N)."""
        return self.noise_multiplier * self.clipping_norm / self.expected_clients

    def noised_fraction(self, unclipped: int, cohort: int) -> float:
        """b̃: the noised fraction of the cohort's updates left unclipped, over q N, each indicator shifted by -½."""
        shifted = unclipped - cohort / 2 + float(np.random.normal(0.0, self.clipped_count_stddev))
        return shifted / self.expected_clients + 0.5

    def _follow_quantile(self, unclipped: int, cohort: int) -> None:
        """Andrew et al.'s geometric step toward the target fraction of unclipped updates."""
        fraction = self.noised_fraction(unclipped, cohort)
        self.clipping_norm *= math.exp(-self.clip_norm_lr * (fraction - (self.target_unclipped or 0.0)))


class KeepDenominator(Around):
    """`strategy` given the fixed-size cohort's k as its denominator: when only n < k of the clients sampled
    replied, each reply's update is scaled by n / k, so the equal-weight average is Σ update / k and a failed
    client counts as a zero update. Flower's DP wrappers size the noise for k and would otherwise average over n,
    making the noise z n / k relative to the sensitivity while the accountant charges z. A full round is handed
    on untouched."""

    def __init__(self, strategy: Strategy, clients: int) -> None:
        super().__init__()
        self.strategy, self.clients = strategy, clients
        self.current: list[np.ndarray] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = arrays.to_numpy_ndarrays()
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        if 0 < len(replies) < self.clients:
            scale = len(replies) / self.clients
            for reply in replies:
                for name, record in reply.content.array_records.items():
                    reply.content[name] = ArrayRecord(
                        {
                            k: Array(np.asarray(c + scale * (w - c)))
                            for k, c, w in zip(record.keys(), self.current, record.to_numpy_ndarrays(), strict=True)
                        }
                    )
        return self.strategy.aggregate_train(server_round, replies)

"""Client-level differential privacy on Flower's own DP: its strategy wrappers and client mods, plus ε.

Flower clips each client's update (on the server, or in the client with its mod) to `clipping_norm`,
averages the clipped updates with equal weights, and adds Gaussian noise of standard deviation
noise_multiplier × clipping_norm / clients per round to the average. `epsilon` turns that into ε with
dp-accounting's RDP accountant; fedsim.outputs.privacy_budget.PrivacyBudget reports it every round (README,
"Differential privacy"). Light to import: every ClientApp process loads it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from fedsim.config.compose import config_from
from fedsim.privacy.fixed_denominator import FixedDenominatorDP
from fedsim.system.errors import ConfigError, first_line

WEIGHT_KEY = "aggregation-weight"  # what the strategy weights by under DP: 1 per training reply


# Robust aggregators do not average: Flower's noise, calibrated to the mean of clipped updates, does not
# bound what they release.
ROBUST = (FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan)


@dataclass
class Privacy:
    """The `privacy` config group: which of Flower's DP wrappers, with which settings.

    `sampling` is the accountant's model of how clients are chosen (it follows `strategy.sampling`):
    without_replacement (a fixed number of the clients each round, with the replace-one neighbouring relation),
    poisson (each client with probability q, add-or-remove-one) or none (no amplification by sampling,
    add-or-remove-one: Flower's own accounted mode). `accountant`: dp-accounting's pld or rdp (rdp for a run
    saved before there was a choice).
    """

    mode: str = "none"
    noise_multiplier: float = 1.0
    clipping_norm: float = 100.0
    delta: float = 1e-5
    sampling: str = "without_replacement"
    accountant: str = "rdp"
    initial_clipping_norm: float = 10.0
    target_clipped_quantile: float = 0.5
    clip_norm_lr: float = 0.2
    clipped_count_stddev: float | None = None

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def client_side(self) -> bool:
        return self.mode.startswith("client_")

    @property
    def adaptive(self) -> bool:
        return self.mode.endswith("_adaptive")

    def check(self, strategy: Strategy, attack: str, transport: str) -> None:
        """Refuse what this mode cannot be combined with, in one line."""
        if not self.enabled:
            return
        if isinstance(strategy, ROBUST) or getattr(strategy, "robust", False):  # fedsim.server.robust's
            raise ConfigError(
                "privacy",
                f"{self.mode} with strategy {type(strategy).__name__}: Flower's DP noise "
                "is calibrated to the mean of clipped updates, which a robust aggregator does not "
                "release; allowed: an averaging strategy (fedavg, fedprox, fedadam, fedyogi, "
                "fedadagrad, fedavgm), or privacy=none",
            )
        if self.client_side and attack != "none":
            raise ConfigError(
                "privacy",
                f"{self.mode} with attack={attack}: client-side clipping runs in each "
                "client, and a malicious client would not clip; allowed: privacy=server_fixed or "
                "server_adaptive with an attack, or attack=none",
            )
        if self.client_side and transport != "float32":
            raise ConfigError(
                "transport",
                f"{transport} with privacy={self.mode}: Flower's clipping mod replaces "
                "the client's update with float32 arrays; allowed: float32, or a server_* mode",
            )

    @property
    def neighbouring_relation(self) -> str:
        return "replace_one" if self.sampling == "without_replacement" else "add_or_remove_one"

    def wrap(self, strategy: Strategy, num_sampled_clients: int, expected_clients: float | None = None) -> Strategy:
        """`strategy` inside the DP wrapper for this mode, averaging with equal weights; as is for none. Under
        Poisson sampling (`expected_clients` = q N) fedsim's fixed-denominator wrapper, else Flower's. A
        wrapper's refusal (adaptive noise too large for the clipped count's) is a ConfigError."""
        if not self.enabled:
            return strategy
        strategy.weighted_by_key = WEIGHT_KEY
        try:
            if expected_clients is not None:
                return FixedDenominatorDP(
                    strategy,
                    self.noise_multiplier,
                    self.initial_clipping_norm if self.adaptive else self.clipping_norm,
                    expected_clients,
                    client_side=self.client_side,
                    target_clipped_quantile=self.target_clipped_quantile if self.adaptive else None,
                    clip_norm_lr=self.clip_norm_lr,
                    clipped_count_stddev=self.clipped_count_stddev,
                )
            return self._wrapper(strategy, num_sampled_clients)
        except ValueError as exc:
            stddev = self.clipped_count_stddev or num_sampled_clients / 20
            raise ConfigError(
                "privacy.noise_multiplier",
                f"Flower's {self.mode} wrapper refused "
                f"{self.noise_multiplier} with {num_sampled_clients} clients per round ({first_line(exc)}); "
                f"allowed: below 2 x privacy.clipped_count_stddev = {2 * stddev:g} (null: clients per "
                "round / 20), or a larger clipped_count_stddev",
            ) from None

    def _wrapper(self, strategy: Strategy, num_sampled_clients: int) -> Strategy:
        if self.adaptive:
            wrapper = {"server_adaptive": ServerSideAdaptiveClipping, "client_adaptive": ClientSideAdaptiveClipping}[
                self.mode
            ]
            return wrapper(
                strategy,
                self.noise_multiplier,
                num_sampled_clients,
                initial_clipping_norm=self.initial_clipping_norm,
                target_clipped_quantile=self.target_clipped_quantile,
                clip_norm_lr=self.clip_norm_lr,
                clipped_count_stddev=self.clipped_count_stddev,
            )
        wrapper = {
            "server_fixed": DifferentialPrivacyServerSideFixedClipping,
            "client_fixed": DifferentialPrivacyClientSideFixedClipping,
        }[self.mode]
        return wrapper(strategy, self.noise_multiplier, self.clipping_norm, num_sampled_clients)


class _NormFollowsQuantile:
    """Flower 1.42's adaptive update, C *= exp(-lr (clipped fraction - target)), shrinks the norm when most
    updates are clipped, so it runs away from the target instead of toward it (Andrew et al. 2019 count the
    updates *not* clipped). This turns the sign: more clipped than `target_clipped_quantile`, C grows."""

    clipping_norm: float
    clip_norm_lr: float
    target_clipped_quantile: float

    def _geometric_update(self, clipped_fraction: float) -> None:
        self.clipping_norm *= math.exp(self.clip_norm_lr * (clipped_fraction - self.target_clipped_quantile))


class ServerSideAdaptiveClipping(_NormFollowsQuantile, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping, its norm moving toward the target quantile."""


class ClientSideAdaptiveClipping(_NormFollowsQuantile, DifferentialPrivacyClientSideAdaptiveClipping):
    """Flower's client-side adaptive clipping, its norm moving toward the target quantile."""


def inner_strategy(strategy: Strategy) -> Strategy:
    """The aggregating strategy inside any wrapper (Flower's DP wrappers keep it as `.strategy`)."""
    while isinstance(getattr(strategy, "strategy", None), Strategy):
        strategy = strategy.strategy
    return strategy


def privacy_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A Flower mod: under DP, every training reply weighs 1 (`aggregation-weight`; an evaluation reply
    weighs its examples), and in the client_* modes Flower's clipping mod clips the update."""
    kind = message.metadata.message_type
    settings = config_from(context.run_config).get("privacy") if kind in ("train", "evaluate") else None
    privacy = Privacy(mode=settings.mode if settings is not None else "none")
    if not privacy.enabled:
        return call_next(message, context)
    train = kind == "train"
    if train and privacy.client_side:
        clip = adaptiveclipping_mod if privacy.adaptive else fixedclipping_mod
        reply = clip(message, context, call_next)
    else:
        reply = call_next(message, context)
    if not reply.has_error():
        metrics = reply.content["metrics"]
        metrics[WEIGHT_KEY] = 1 if train else metrics["num-examples"]
    return reply

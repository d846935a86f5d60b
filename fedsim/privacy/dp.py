"""Client-level differential privacy on Flower's own DP: its strategy wrappers and client mods, plus ε.

Flower clips each client's update (on the server, or in the client with its mod) to `clipping_norm`,
averages the clipped updates with equal weights, and adds Gaussian noise of standard deviation
noise_multiplier × clipping_norm / clients per round to the average. fedsim.privacy.accounting turns that into ε
with dp-accounting's PLD or RDP accountant; fedsim.outputs.privacy_budget.PrivacyBudget reports it every round
(docs/how-to/privacy.md). Light to import: every ClientApp process loads it.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from fedsim.config.compose import config_from
from fedsim.config.validate import SEEDED
from fedsim.privacy.adaptive import ClientSideAdaptiveClipping, ServerSideAdaptiveClipping
from fedsim.privacy.fixed_denominator import FixedDenominatorDP, KeepDenominator
from fedsim.privacy.randomness import NoiseSource
from fedsim.system.errors import ConfigError, first_line

WEIGHT_KEY = "aggregation-weight"  # what the strategy weights by under DP: 1 per training reply


# Robust aggregators do not average: Flower's noise, calibrated to the mean of clipped updates, does not
# bound what they release.
ROBUST = (FedMedian, FedTrimmedAvg, Krum, MultiKrum, Bulyan)


@dataclass(frozen=True)
class Release:
    """What the accountant charges for one round (run.json): the multiplier of the whole release it composes,
    the noised count's sensitivity (None: no count, fixed clipping), and where the noise came from."""

    noise_multiplier_effective: float
    count_sensitivity: float | None
    noise_source: str


@dataclass
class Privacy:
    """The `privacy` config group: which of Flower's DP wrappers, with which settings.

    `sampling` is the accountant's model of how clients are chosen (it follows `strategy.sampling`):
    without_replacement (a fixed number of the clients each round, with the replace-one neighbouring relation),
    poisson (each client with probability q, add-or-remove-one) or none (no amplification by sampling,
    add-or-remove-one: Flower's own accounted mode). `accountant`: dp-accounting's pld or rdp (rdp for a run
    saved before there was a choice). `noise_source`: seeded or secure (fedsim.privacy.randomness).
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
    noise_source: str = SEEDED

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

    def noise(self, seed: int) -> NoiseSource:
        """Where the run's DP noise and, under DP, its cohort come from (seeded when there is no DP)."""
        return NoiseSource(self.noise_source if self.enabled else SEEDED, seed)

    def release(self, wrapper: Strategy) -> Release:
        """What one round releases, as the accountant composes it, from the built `wrapper`.

        Fixed clipping releases the update alone, at multiplier z. An adaptive round releases the update at
        z_Δ and the count of unclipped updates at σ_b, whose sensitivity is s_b (½ when each indicator is
        shifted by -½, fedsim's fixed-denominator wrapper; 1 in Flower's wrappers). With the update's
        sensitivity u C (u = 2 under replace-one, else 1), the pair is one Gaussian of multiplier
        z_eff = (z_Δ⁻² + (u σ_b / s_b)⁻²)^(-1/2) in the accountant's convention (Andrew et al. 2021, Theorem 1;
        Mironov 2017, composition of Gaussians). That is z where the split is exact (the shift, or
        replace-one), and less than z for Flower's unshifted count under add-or-remove-one.
        """
        if not self.adaptive:
            return Release(self.noise_multiplier, None, self.noise_source)
        count_sensitivity = 0.5 if isinstance(wrapper, FixedDenominatorDP) else 1.0
        update_sensitivity = 2.0 if self.neighbouring_relation == "replace_one" else 1.0
        if update_sensitivity / count_sensitivity == 2:  # the split z_Δ was made for: the pair spends z exactly
            return Release(self.noise_multiplier, count_sensitivity, self.noise_source)
        update_z, stddev = float(wrapper.noise_multiplier), float(wrapper.clipped_count_stddev)
        if update_z == 0 or stddev == 0:  # a part released without noise: nothing is private (ε = ∞)
            return Release(0.0, count_sensitivity, self.noise_source)
        multiplier = (update_z**-2 + (update_sensitivity * stddev / count_sensitivity) ** -2) ** -0.5
        return Release(multiplier, count_sensitivity, self.noise_source)

    def wrap(self, strategy: Strategy, num_sampled_clients: int, expected_clients: float | None = None) -> Strategy:
        """`strategy` inside the DP wrapper for this mode, averaging with equal weights; as is for none. Under
        Poisson sampling (`expected_clients` = q N) fedsim's fixed-denominator wrapper, else Flower's, around
        KeepDenominator (a failed client counts as a zero update, as in the Poisson path). A wrapper's refusal
        (adaptive noise too large for the clipped count's) is a ConfigError."""
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
            return self._wrapper(KeepDenominator(strategy, num_sampled_clients), num_sampled_clients)
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


def inner_strategy(strategy: Strategy) -> Strategy:
    """The aggregating strategy inside any wrapper (Flower's DP wrappers keep it as `.strategy`)."""
    while isinstance(getattr(strategy, "strategy", None), Strategy):
        strategy = strategy.strategy
    return strategy


def uniform_weight(reply: Message) -> str | None:
    """Why a training reply may not be aggregated under DP: a weight other than 1. The noise is sized for an
    equal-weight average, where one client moves the result by at most C / n; a reply weighing more (or 0, or
    less) moves the others' influence off that bound. Such a reply counts as failed (fedsim.server.cohort)."""
    weight = reply.content["metrics"].get(WEIGHT_KEY)
    if weight == 1:
        return None
    return f"{WEIGHT_KEY} {weight} under differential privacy; allowed: 1 (every client weighs the same)"


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

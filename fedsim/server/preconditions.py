"""What a strategy needs of the federation: Flower's robust aggregators tolerate f malicious clients only with
enough clients a round, and Flower waits forever for nodes the federation lacks. Checked in
`fedsim.run.experiment.build`, before any data is read."""

from __future__ import annotations

from collections.abc import Callable

from flwr.serverapp.strategy import Bulyan, MultiKrum, Strategy

from fedsim.config.counts import Counts
from fedsim.config.settings import ByzantineSettings
from fedsim.server import robust
from fedsim.system.errors import ConfigError

# Minimum clients per round each robust aggregator needs for f tolerated malicious clients (Bulyan first, as it is
# no MultiKrum; Flower's Krum is a Flower MultiKrum that selects one; fedsim's Multi-Krum is its own class).
MIN_CLIENTS: dict[type, tuple[Callable[[int], int], str]] = {
    Bulyan: (lambda f: 4 * f + 3, "n >= 4f + 3"),
    MultiKrum: (lambda f: 2 * f + 3, "n > 2f + 2"),
    robust.MultiKrum: (lambda f: 2 * f + 3, "n > 2f + 2"),
}


def check_strategy(strategy: Strategy, byzantine: ByzantineSettings, counts: Counts) -> None:
    """Refuse a strategy whose preconditions this configuration breaks."""
    for key, wanted in byzantine.min_nodes.items():
        # Flower's sampling waits, without end, until that many nodes are online: more than the federation has
        # never are (fedsim's strategies see every node of the federation as online, fedsim.server.participation).
        if key == "min_evaluate_nodes" and not byzantine.evaluates:
            continue  # no federated evaluation: Flower ignores it
        if wanted > counts.num_clients:
            raise ConfigError(
                f"strategy.{key}",
                f"{wanted}, but the federation has num_clients={counts.num_clients} "
                f"(Flower would wait forever for the nodes it lacks); allowed: at most "
                f"{counts.num_clients}",
            )
    n = counts.fit
    for cls, (minimum, rule) in MIN_CLIENTS.items():
        if isinstance(strategy, cls):
            f = int(strategy.num_malicious_nodes)
            actual = counts.malicious
            if f < actual:
                print(f"note: {type(strategy).__name__} assumes f={f} malicious clients; the attack has {actual}")
            if n < minimum(f):
                raise ConfigError(
                    "strategy.num_malicious_nodes",
                    f"{type(strategy).__name__} with f={f} needs {rule}, i.e. at least {minimum(f)} clients "
                    f"per round, but {n} train per round; allowed: raise num_clients or strategy.fraction_train, "
                    "or lower f",
                )
            m = getattr(strategy, "m", None)
            if isinstance(strategy, robust.MultiKrum) and m is not None and m > n:
                raise ConfigError(
                    "strategy.m", f"{m}, but {n} clients train per round; allowed: null (n - f) or 1..{n}"
                )
            return


def check_byzantine(byzantine: ByzantineSettings, counts: Counts, omniscient: bool) -> None:
    """Refuse an omniscient attack or a pre-aggregation step that the round's n and f break (fedsim.byzantine)."""
    n, f = counts.fit, counts.malicious_per_round
    name = byzantine.attack
    if omniscient:
        if f >= n:
            raise ConfigError(
                "attack.node_ratio",
                f"attack={name} forges from the round's honest updates, but all {n} clients per round are malicious; "
                f"allowed: a node_ratio that leaves honest clients (at most {(n - 1) / counts.num_clients:g})",
            )
        if name == "alie" and byzantine.attack_z is None and f >= n // 2 + 1:
            raise ConfigError(
                "attack.node_ratio",
                f"alie's z_max needs f < n/2 + 1 (the attackers a minority), but f={f} of n={n} per round; "
                "allowed: a smaller node_ratio, or an explicit attack.z",
            )
    pre = byzantine.pre
    if pre in ("nnm", "arc") and 2 * int(byzantine.pre_f or 0) >= n:
        raise ConfigError(
            "pre.f",
            f"{pre} with f={byzantine.pre_f} needs n > 2f, but {n} clients train per round; "
            f"allowed: f <= {(n - 1) // 2}",
        )
    if pre == "bucketing" and int(byzantine.pre_s or 0) > n:
        raise ConfigError("pre.s", f"{byzantine.pre_s}, but {n} clients train per round; allowed: 1..{n}")


def check_poisson(byzantine: ByzantineSettings, strategy: Strategy, omniscient: bool) -> None:
    """Refuse what cannot take a round of random size under strategy.sampling=poisson: the aggregators and
    pre-aggregation steps that tolerate f malicious clients only with enough clients in every round, and an
    omniscient attack, which forges from the round's honest updates (a Poisson round may have none)."""
    if not byzantine.poisson:
        return
    for cls, (_, rule) in MIN_CLIENTS.items():
        if isinstance(strategy, cls):
            raise ConfigError(
                "strategy.sampling",
                f"poisson with {type(strategy).__name__}, which needs {rule} in every round, but a Poisson cohort's "
                "size is random (it may be 0); allowed: strategy.sampling=fixed with it, or a strategy without a "
                "bound on n (fedavg, fedprox, fedadam, fedyogi, fedadagrad, fedavgm, fedmedian, trimmed_mean, "
                "geometric_median, centered_clipping)",
            )
    if byzantine.pre != "none":
        raise ConfigError(
            "strategy.sampling",
            f"poisson with pre={byzantine.pre}, whose f malicious clients need enough clients in every round, but a "
            "Poisson cohort's size is random (it may be 0); allowed: strategy.sampling=fixed with it, or pre=none",
        )
    if omniscient:
        raise ConfigError(
            "strategy.sampling",
            f"poisson with attack={byzantine.attack}, which forges from the round's honest updates, but a Poisson "
            "round may have none; allowed: strategy.sampling=fixed with it, or a data or local attack",
        )

"""The config's value checks, and the counts it implies (clients per round, malicious clients).

The checks that need a built part, a strategy's preconditions (fedsim.server.preconditions) and what a privacy
mode cannot be combined with (fedsim.privacy.dp), run right after these in `fedsim.run.experiment.build`, the
one place a config is checked whole, before any data is read or any Ray worker starts."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from fedsim.byzantine.aggregators import SELECTIONS
from fedsim.byzantine.omniscient import BOUNDS, DIRECTIONS
from fedsim.config.partitions import check_partition
from fedsim.system.errors import ConfigError

ADDRESS = re.compile(r"^(auto|[\w.-]+:\d+)$")  # ray.address, when set


TRANSPORTS = ("float32", "float16", "bfloat16")  # transport: how updates travel (fedsim.messages.transport)


PRIVACY_MODES = ("none", "server_fixed", "server_adaptive", "client_fixed", "client_adaptive")  # fedsim.privacy.dp


SAMPLING = ("without_replacement", "poisson", "none")  # privacy.sampling: the accountant's model of participation


STRATEGY_SAMPLING = ("fixed", "poisson")  # strategy.sampling: how a round's clients are drawn


# privacy.sampling's default, by strategy.sampling
ACCOUNTED_AS = {"fixed": "without_replacement", "poisson": "poisson"}


SEEDED, SECURE = "seeded", "secure"  # privacy.noise_source (fedsim.privacy.randomness)


ACCOUNTANTS = ("pld", "rdp")  # privacy.accountant: dp-accounting's privacy loss distribution or Renyi DP


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# key -> (test, what is allowed); a None value is allowed only where the test accepts it.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "num_clients": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "num_rounds": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "seed": (_is_int, "an integer"),
    "assumed_malicious": (
        lambda v: v is None or (_is_int(v) and v >= 0),
        "null (the attack's count) or an integer >= 0",
    ),
    "scrutiny": (lambda v: isinstance(v, bool), "true or false"),
    "overwrite": (lambda v: isinstance(v, bool), "true or false"),
    "sparse_updates": (lambda v: isinstance(v, bool), "true or false"),
    "runtime.cohort_messages": (lambda v: isinstance(v, bool), "true or false"),
    "runtime.startup_timeout_s": (lambda v: _is_number(v) and v > 0, "a number of seconds > 0"),
    "runtime.reply_timeout_s": (lambda v: _is_number(v) and v > 0, "a number of seconds > 0"),
    "runtime.max_retries": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: a crashed worker's clients fail)"),
    "runtime.max_restarts": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0: a crash ends the run)"),
    "log_level": (lambda v: v in logging.getLevelNamesMapping(), "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    "data.train_size": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "data.test_size": (lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    "data.val_fraction": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "data.max_length": (lambda v: _is_int(v) and v >= 8, "an integer >= 8"),
    "client.local_epochs": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "client.batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "client.lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "resources.num_cpus": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "resources.num_gpus": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "strategy.fraction_train": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "strategy.fraction_evaluate": (
        lambda v: _is_number(v) and 0 <= v <= 1,
        "a number in [0, 1] (0 skips federated evaluation)",
    ),
    "strategy.min_train_nodes": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "strategy.min_evaluate_nodes": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "strategy.num_malicious_nodes": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "strategy.m": (
        lambda v: v is None or (_is_int(v) and v >= 1),
        "null (n - f, n the round's replies) or an integer >= 1",
    ),
    "strategy.selection": (lambda v: v in SELECTIONS, "recursive (the paper's Bulyan) or one_shot (Flower's)"),
    "strategy.proximal_mu": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "transport": (lambda v: v in TRANSPORTS, "float32, float16 or bfloat16"),
    "ray.address": (
        lambda v: v is None or (isinstance(v, str) and ADDRESS.match(v) is not None),
        "null (a private Ray instance), auto, or HOST:PORT of a running Ray cluster's head",
    ),
    "ray.max_actors": (lambda v: v == "auto" or (_is_int(v) and v >= 1), "auto or an integer >= 1"),
    "runtime.node_slots": (
        lambda v: v is None or v == "auto" or (_is_int(v) and v >= 1),
        "auto, null (one simulated node per client) or an integer >= 1",
    ),
    "archive.mode": (lambda v: v in ("all", "global", "none"), "all, global or none"),
    "archive.dtype": (lambda v: v in ("float32", "float16", "bfloat16"), "float32, float16 or bfloat16"),
    "archive.layers": (lambda v: len(v) > 0 and all(isinstance(p, str) for p in v), "a list of glob patterns"),
    "archive.max_pending": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "partition.alpha": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "partition.classes_per_client": (lambda v: v in (1, 2), "1 or 2 (IMDB has two labels)"),
    "partition.labels_per_client": (lambda v: v in (1, 2), "1 or 2 (IMDB has two labels)"),
    "partition.num_shards_per_partition": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "partition.shard_size": (
        lambda v: v is None or (_is_int(v) and v >= 1),
        "null (as large as fits) or an integer >= 1",
    ),
    "partition.strictness": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "partition.sigma": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "partition.preassigned_per_label": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "attack.node_ratio": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "attack.data_ratio": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "attack.mode": (lambda v: v in ("flip", "random"), "flip or random"),
    # The attacks' parameters within their papers' ranges (docs/explanation/byzantine.md, "Parameter ranges"): at the
    # edge, the noise std 0, IPM's epsilon 0 and ALIE's z 0 send an honest update; beyond it, another attack.
    "attack.std": (lambda v: _is_number(v) and v > 0, "a number > 0 (0 adds no noise)"),
    "attack.scale": (
        lambda v: _is_number(v) and v > 0,
        "a number > 0 (scaling's boost of its update; a negative factor is sign_flip's attack, 0 the global model; "
        "random_weights' multiple of the weights' std)",
    ),
    "attack.z": (
        lambda v: v is None or (_is_number(v) and v > 0),
        "null (the paper's z_max from n and f) or a number > 0 (the paper's z_max is a positive normal quantile; "
        "0 sends the honest mean)",
    ),
    "attack.epsilon": (
        lambda v: _is_number(v) and v > 0,
        "a number > 0 (IPM's -epsilon x the honest mean opposes the mean; 0 sends the zero update, a negative "
        "epsilon a step along the mean)",
    ),
    "attack.bound": (lambda v: v in BOUNDS, "min (the authors' code) or max (the paper's text)"),
    "attack.direction": (lambda v: v in DIRECTIONS, ", ".join(DIRECTIONS)),
    "attack.tolerance": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "attack.target": (lambda v: v is None or (_is_int(v) and v >= 0), "null (the paper's choice) or an integer >= 0"),
    "strategy.tau": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "strategy.nu": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "strategy.iterations": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "strategy.weighted": (lambda v: isinstance(v, bool), "true or false"),
    "pre.f": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "pre.s": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "faults.dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "faults.stragglers": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "faults.slowdown": (lambda v: _is_number(v) and v >= 1, "a number >= 1"),
    "faults.delay_mean_s": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "faults.examples_per_s": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "faults.round_timeout_s": (lambda v: v is None or (_is_number(v) and v > 0), "null or a number > 0"),
    "faults.max_failure_rate": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "privacy.mode": (lambda v: v in PRIVACY_MODES, ", ".join(PRIVACY_MODES)),
    "privacy.noise_multiplier": (lambda v: _is_number(v) and v >= 0, "a number >= 0 (0: clipping without noise)"),
    "privacy.clipping_norm": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "privacy.delta": (lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)"),
    "privacy.sampling": (lambda v: v in SAMPLING, ", ".join(SAMPLING)),
    "privacy.accountant": (lambda v: v in ACCOUNTANTS, ", ".join(ACCOUNTANTS)),
    "privacy.noise_source": (lambda v: v in (SEEDED, SECURE), f"{SEEDED}, {SECURE}"),
    "strategy.sampling": (lambda v: v in STRATEGY_SAMPLING, ", ".join(STRATEGY_SAMPLING)),
    "privacy.initial_clipping_norm": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "privacy.target_clipped_quantile": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "privacy.clip_norm_lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "privacy.clipped_count_stddev": (lambda v: v is None or (_is_number(v) and v > 0), "null or a number > 0"),
    "tracking.tags": (lambda v: isinstance(v, DictConfig), "a mapping of tag names to values"),
}


def _gpu_count() -> int:
    import torch  # only when a run asks for GPUs: every fedsim process imports this module

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _select(cfg: DictConfig, key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False, None
        node = node[part]
    return True, node


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first key whose value cannot work."""
    for key, (test, allowed) in RULES.items():
        present, value = _select(cfg, key)
        if present and not test(value):
            raise ConfigError(key, f"got {value!r}; allowed: {allowed}")
    attached = cfg.ray.address is not None
    if attached and cfg.runtime.name != "simulation":
        raise ConfigError(
            "ray.address",
            f"got {cfg.ray.address!r} with runtime={cfg.runtime.name}, whose clients "
            "are SuperNodes, not Ray actors; allowed: null, or runtime=simulation",
        )
    if not attached:  # a cluster's nodes are checked once attached (fedsim.runtimes.cluster.attach)
        check_local_resources(cfg)
    if cfg.data.val_fraction == 0 and cfg.strategy.get("fraction_evaluate"):
        raise ConfigError(
            "data.val_fraction",
            f"0 leaves every client nothing to evaluate, but "
            f"strategy.fraction_evaluate={cfg.strategy.fraction_evaluate}; allowed: a number in "
            "(0, 1), or strategy.fraction_evaluate=0",
        )
    check_sampling(cfg)
    check_partition(cfg)
    if cfg.attack.name == "none" and cfg.attack.node_ratio:
        raise ConfigError(
            "attack.node_ratio",
            f"got {cfg.attack.node_ratio} with attack=none; allowed: 0, or pick an "
            "attack (random_labels, label_flip, random_weights, gaussian_noise, sign_flip, scaling, ...)",
        )


def check_sampling(cfg: DictConfig) -> None:
    """An accountant's model of participation that matches how the clients are drawn (under strategy.sampling=poisson
    fraction_train and fraction_evaluate are the clients' chances to take part, held to (0, 1] and [0, 1] by RULES)."""
    privacy = cfg.get("privacy")
    if privacy is None or privacy.get("mode", "none") == "none":
        return
    drawn, accounted = cfg.strategy.get("sampling", "fixed"), privacy.get("sampling", "without_replacement")
    if accounted != "none" and accounted != ACCOUNTED_AS[drawn]:
        raise ConfigError(
            "privacy.sampling",
            f"{accounted}, but strategy.sampling={drawn} draws the clients: the accountant would claim an "
            f"amplification the run does not have; allowed: {ACCOUNTED_AS[drawn]} (the default), or none",
        )
    if privacy.get("accountant") == "pld" and accounted == "without_replacement":
        raise ConfigError(
            "privacy.accountant",
            "pld, but dp-accounting's PLD accountant has no event for sampling a fixed number of clients without "
            "replacement (strategy.sampling=fixed); allowed: rdp (the default there), or strategy.sampling=poisson",
        )


def check_local_resources(cfg: DictConfig) -> None:
    """Per-client resources this machine can host (a private Ray instance)."""
    if cfg.resources.num_gpus > _gpu_count():
        gpus = _gpu_count()
        raise ConfigError(
            "resources.num_gpus",
            f"got {cfg.resources.num_gpus}, but {gpus or 'no'} CUDA GPU"
            f"{'' if gpus == 1 else 's'} {'is' if gpus == 1 else 'are'} visible here (Ray would wait "
            f"forever to place a client); allowed: at most {gpus} on this machine",
        )
    if cfg.resources.num_cpus > (os.cpu_count() or 1):
        raise ConfigError(
            "resources.num_cpus",
            f"{cfg.resources.num_cpus} per client, but this machine has "
            f"{os.cpu_count()} CPUs (Ray would wait forever to place a client); allowed: at most "
            f"{os.cpu_count()}",
        )

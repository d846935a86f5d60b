"""Typed settings: what a part of fedsim reads from the composed config, built once into a frozen value, so the
part takes plain, typed arguments and never the config itself (only the entry points and `instantiate` calls do).

So far: the data step's (`DataSettings`: fedsim.data takes nothing else), the server round loop's
(`ServerSettings`), the Byzantine preconditions' (`ByzantineSettings`), the standard outputs'
(`OutputSettings`) and the simulation runtime's (`SimulationSettings`). The client counts are
`fedsim.config.counts.Counts`, and the clients' settings `fedsim.client.client.ClientSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedsim.config.counts import Counts


@dataclass(frozen=True)
class DataSettings:
    """What the data step reads: IMDB's path and subsets, the cache, the featurizer and the partitioner (as the
    plain dicts `instantiate` and flwr-datasets take), the seed, and the clients with their held-out share."""

    path: str
    train_size: int | None
    test_size: int | None
    cache_dir: str
    seed: int
    num_clients: int
    val_fraction: float  # the share of each client's rows held out for local validation
    fraction_evaluate: float  # the share of clients that evaluate those rows
    featurizer: dict[str, Any]
    partition: dict[str, Any]

    @classmethod
    def of(cls, cfg: DictConfig) -> DataSettings:
        """`val_fraction` is data.val_fraction, or 0 where nothing evaluates the held-out rows
        (strategy.fraction_evaluate = 0): rows no one evaluates are better trained on."""
        fraction_evaluate = float(cfg.strategy.get("fraction_evaluate", 1.0))
        return cls(
            path=str(cfg.data.path),
            train_size=cfg.data.train_size,
            test_size=cfg.data.test_size,
            cache_dir=str(cfg.data.cache_dir),
            seed=int(cfg.seed),
            num_clients=int(cfg.num_clients),
            val_fraction=0.0 if fraction_evaluate == 0 else float(cfg.data.val_fraction),
            fraction_evaluate=fraction_evaluate,
            featurizer=OmegaConf.to_container(cfg.model.featurizer, resolve=True),
            partition=OmegaConf.to_container(cfg.partition, resolve=True),
        )


@dataclass(frozen=True)
class ServerSettings:
    """What the server's round loop reads besides its built parts (strategy, attack, faults, privacy): the run's
    size and seed, how long it waits, and how it draws and addresses the clients."""

    num_clients: int
    num_rounds: int
    seed: int
    local_epochs: int
    transport: str  # the precision updates travel in (fedsim.messages.transport)
    startup_timeout_s: float  # how long the federation may take to answer first
    reply_timeout_s: float  # how long a round's replies may take (3600 as Flower's Strategy.start)
    cohort_messages: bool  # one message per node for its share of the cohort (fedsim.messages.carried)
    sampling: str  # strategy.sampling: fixed or poisson
    fraction_train: float  # under poisson, each client's chance to train in a round
    fraction_evaluate: float

    @classmethod
    def of(cls, cfg: DictConfig) -> ServerSettings:
        strategy = cfg.strategy
        return cls(
            num_clients=int(cfg.num_clients),
            num_rounds=int(cfg.num_rounds),
            seed=int(cfg.seed),
            local_epochs=int(cfg.client.local_epochs),
            transport=str(cfg.transport),
            startup_timeout_s=float(cfg.runtime.startup_timeout_s),
            reply_timeout_s=float(cfg.runtime.reply_timeout_s),
            cohort_messages=bool(cfg.runtime.get("cohort_messages", False)),
            sampling=str(strategy.get("sampling", "fixed")),
            fraction_train=float(strategy.get("fraction_train", 1.0)),
            fraction_evaluate=float(strategy.get("fraction_evaluate", 1.0)),
        )


@dataclass(frozen=True)
class ByzantineSettings:
    """What the Byzantine preconditions read (fedsim.server.preconditions): the attack and the pre-aggregation
    step with their parameters, how clients are drawn, and the node minimums the strategy waits for."""

    attack: str
    attack_z: float | None  # ALIE's z; None: z_max from n and f
    pre: str
    pre_f: int | None
    pre_s: int | None
    poisson: bool
    min_nodes: dict[str, int]  # strategy.min_available_nodes, min_train_nodes, min_evaluate_nodes (0 when unset)
    evaluates: bool  # strategy.fraction_evaluate > 0: the evaluation minimum applies

    @classmethod
    def of(cls, cfg: DictConfig) -> ByzantineSettings:
        strategy, pre = cfg.strategy, cfg.pre
        return cls(
            attack=str(cfg.attack.name),
            attack_z=cfg.attack.get("z"),
            pre=str(pre.name),
            pre_f=None if pre.get("f") is None else int(pre.f),
            pre_s=None if pre.get("s") is None else int(pre.s),
            poisson=strategy.get("sampling", "fixed") == "poisson",
            min_nodes={
                key: int(strategy.get(key) or 0)
                for key in ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes")
            },
            evaluates=bool(strategy.get("fraction_evaluate", 1.0)),
        )


@dataclass(frozen=True)
class OutputSettings:
    """What a run's standard outputs read (fedsim.run.session.standard_outputs) and the disk check before them:
    the weight statistics, the archive, the rounds, and the failure share that stops a run."""

    num_clients: int
    num_rounds: int
    scrutiny: bool  # layers.csv, clients.csv's update columns, detection.csv
    archive_mode: str  # none, global, all
    archive_layers: tuple[str, ...]
    archive_dtype: str
    archive_max_pending: int
    max_failure_rate: float

    @classmethod
    def of(cls, cfg: DictConfig) -> OutputSettings:
        archive = cfg.archive
        return cls(
            num_clients=int(cfg.num_clients),
            num_rounds=int(cfg.num_rounds),
            scrutiny=bool(cfg.scrutiny),
            archive_mode=str(archive.mode),
            archive_layers=tuple(archive.layers),
            archive_dtype=str(archive.dtype),
            archive_max_pending=int(archive.max_pending),
            max_failure_rate=float(cfg.faults.max_failure_rate),
        )


@dataclass(frozen=True)
class SimulationSettings:
    """What Flower's Ray-backed simulation reads (fedsim.runtimes.simulation, fedsim.runtimes.cluster): each
    client's resources, the Ray instance (a private one, or a cluster's address), how many actors and simulated
    nodes serve the clients, and how often a dead worker's work is redone or a dead Ray replaced."""

    num_clients: int
    log_level: str
    num_cpus: float  # per client
    num_gpus: float  # per client, fractional
    address: str | None  # ray.address: None for a private instance
    max_actors: int  # ray.max_actors, `auto` resolved to as many as a round sends messages at once
    node_slots: int | str | None  # runtime.node_slots: auto, a count, or None (a node per client)
    cohort_messages: bool
    max_retries: int
    max_restarts: int

    @classmethod
    def of(cls, cfg: DictConfig) -> SimulationSettings:
        runtime, limit = cfg.runtime, cfg.ray.max_actors
        return cls(
            num_clients=int(cfg.num_clients),
            log_level=str(cfg.log_level),
            num_cpus=float(cfg.resources.num_cpus),
            num_gpus=float(cfg.resources.num_gpus),
            address=cfg.ray.address,
            max_actors=Counts.of(cfg).at_once if limit == "auto" else int(limit),
            node_slots=runtime.get("node_slots"),
            cohort_messages=bool(runtime.get("cohort_messages", False)),
            max_retries=int(runtime.get("max_retries", 0)),
            max_restarts=int(runtime.get("max_restarts", 0)),
        )

"""`build(cfg)`: the one place a config becomes an experiment, checked whole before any data is read.

main.py, the `flwr run` ServerApp and run_and_collect's pre-check all call it. Tests and bench
scripts pass their own parts (a client factory, extra outputs) through it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedsim.client.attacks import Attack, malicious_of
from fedsim.client.client import ClientFn, client_fn
from fedsim.config.compose import flatten
from fedsim.config.counts import Counts
from fedsim.config.settings import ByzantineSettings, DataSettings, OutputSettings, ServerSettings
from fedsim.config.validate import validate
from fedsim.data.imdb import offline_unless_hub_reachable
from fedsim.outputs.archive import check_disk, expected_bytes, select_layers
from fedsim.outputs.base import Callback
from fedsim.outputs.phases import check_callbacks
from fedsim.outputs.tracking.tracker import NoTracking, Tracker
from fedsim.privacy.dp import Privacy
from fedsim.run.library_logs import quiet
from fedsim.server.faults import Faults
from fedsim.server.preconditions import check_byzantine, check_poisson, check_strategy
from fedsim.server.robust import PreAggregated
from fedsim.system.errors import ConfigError, first_line


@dataclass
class Experiment:
    """A checked config and the parts of its run; nothing read or written yet."""

    cfg: DictConfig
    strategy: Strategy  # inside Flower's DP wrapper under `privacy`
    attack: Attack
    malicious: list[int]
    faults: Faults
    counts: Counts  # the client counts the config implies
    data: DataSettings  # what the data step reads
    server: ServerSettings  # what the round loop reads
    outputs: OutputSettings  # what the standard outputs read
    run_config: dict[str, Any]  # what the clients see as context.run_config
    privacy: Privacy = field(default_factory=Privacy)
    tracker: Tracker = field(default_factory=NoTracking)
    client_fn: ClientFn = client_fn
    callbacks: list[Callback] = field(default_factory=list)  # outputs added to the standard ones


def build(
    cfg: DictConfig,
    *,
    client_fn: ClientFn = client_fn,
    callbacks: Sequence[Callback] = (),
    run_config: Mapping[str, Any] | None = None,
) -> Experiment:
    """Check the whole config and build the strategy and the attack; raise ConfigError on the first problem.

    `run_config` is the run config the clients get; by default the resolved config itself.
    """
    validate(cfg)
    quiet(cfg.log_level)  # before the strategy, which may log as it is built
    strategy = _instantiate(cfg, "strategy", without=("sampling",))  # fedsim draws the clients (server.participation)
    attack = _instantiate(cfg, "attack")
    counts, byzantine = Counts.of(cfg), ByzantineSettings.of(cfg)
    check_strategy(strategy, byzantine, counts)
    check_byzantine(byzantine, counts, attack.omniscient)
    check_poisson(byzantine, strategy, attack.omniscient)
    if cfg.pre.name != "none":
        strategy = PreAggregated(strategy, _instantiate(cfg, "pre"))
    faults = _instantiate(cfg, "faults")
    privacy = _instantiate(cfg, "privacy")
    server = ServerSettings.of(cfg)
    privacy.check(strategy, attack.name, server.transport)
    tracker = _instantiate(cfg, "tracking")
    check_callbacks([], callbacks)  # a callback whose phase or metrics cannot work, before anything is read
    return Experiment(
        cfg=cfg,
        strategy=privacy.wrap(strategy, counts.fit, counts.expected),
        attack=attack,
        malicious=malicious_of(attack, int(cfg.num_clients), int(cfg.seed)),
        faults=faults,
        counts=counts,
        data=DataSettings.of(cfg),
        server=server,
        outputs=OutputSettings.of(cfg),
        privacy=privacy,
        tracker=tracker,
        run_config=dict(run_config) if run_config is not None else flatten(cfg),
        client_fn=client_fn,
        callbacks=list(callbacks),
    )


def _instantiate(cfg: DictConfig, key: str, without: Sequence[str] = ()) -> Any:
    """A config group's object, built without the `without` keys (fedsim's, not the constructor's); its
    constructor's own refusal becomes a one-line ConfigError."""
    node: Any = cfg[key]
    if without:
        node = {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in without}
    try:
        return instantiate(node)
    except InstantiationException as exc:
        raise ConfigError(
            key, f"{node.get('_target_')} refused its settings: {first_line(exc.__cause__ or exc)}"
        ) from None


def load_model(cfg: DictConfig) -> torch.nn.Module:
    """The seeded initial model; a model that cannot be loaded is bad input, named by its key."""
    name = cfg.model.net.get("name")  # set for nets loaded by name (a directory or a Hub id)
    missing = name is not None and not Path(os.path.expanduser(str(name))).exists()
    if missing:
        offline_unless_hub_reachable()
    try:
        return instantiate(cfg.model.net)
    except Exception as exc:
        where = (
            "no such directory"
            if missing and str(name).startswith(("/", ".", "~"))
            else first_line(exc.__cause__ or exc)
        )
        raise ConfigError(
            "model.name",
            f"cannot load {name!r}: {where}; allowed: a local model directory "
            "(model.name=/path/to/checkpoint), or a Hub id that is cached or reachable",
        ) from None


def check_space(
    outputs: OutputSettings, run_dir: Path, names: list[str], weights: list[np.ndarray], per_round: int
) -> None:
    """Refuse a run whose files would not fit the disk: the archive (announced with its size), the final
    model, and the checkpoint (the model and up to three strategy arrays per weight, e.g. FedAdam's
    moments) with its replacement written beside it."""
    model_bytes = sum(w.nbytes for w in weights)
    needed = model_bytes + 2 * 4 * model_bytes
    if outputs.archive_mode != "none":
        kept = select_layers(names, list(outputs.archive_layers))
        if not kept:
            raise ConfigError(
                "archive.layers", f"{list(outputs.archive_layers)} match no layer; layers are e.g. {names[:3]}"
            )
        archive = expected_bytes(
            weights, names, kept, outputs.archive_dtype, outputs.archive_mode, outputs.num_rounds, per_round
        )
        print(
            f"archive: mode={outputs.archive_mode} dtype={outputs.archive_dtype}, {len(kept)}/{len(names)} layers, "
            f"about {archive / 1e9:.2f} GB expected"
        )
        needed += archive
    check_disk(run_dir, needed)

"""The clients: `IMDBClient` trains and evaluates one partition with a model kept alive per worker
process, and `client_fn(context)` gives the ClientApp the client of the context's partition.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import Context
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from fedsim.client.attacks import Attack, malicious_of
from fedsim.config.compose import config_from, config_key
from fedsim.config.settings import DataSettings
from fedsim.data.loader import Loader, load_data, load_node_data
from fedsim.data.prepare import PreparedData, load_prepared
from fedsim.model.indexed_rows import Trained, loaded
from fedsim.model.train import evaluate, train
from fedsim.privacy.dp import Privacy

Weights = list[np.ndarray]


@dataclass(frozen=True, eq=False)
class ClientSettings:
    """Everything a client needs from the run's config, as typed values (one object per process and run)."""

    prepared: PreparedData | None  # None on a node that does not share the server's cache (its own data-path)
    net: DictConfig  # model.net, instantiated once per process
    featurizer: DictConfig  # model.featurizer, for a node's own data
    cache_dir: str
    val_fraction: float
    optimizer: DictConfig  # model.optimizer, a partial taking (params, lr)
    local_epochs: int
    batch_size: int
    lr: float
    num_threads: int
    use_gpu: bool
    seed: int
    log_level: str
    attack: DictConfig
    transport: str = "float32"  # the precision updates travel in (fedsim.messages.transport)
    malicious: tuple[int, ...] = ()
    sparse_rows: bool = False  # a reply may send just the trained rows it changed, built from them directly

    @classmethod
    def from_cfg(cls, cfg: DictConfig, prepared: PreparedData | None = None) -> ClientSettings:
        """The settings of a run's clients; the prepared data as the server recorded it, unless given."""
        attack, data = instantiate(cfg.attack), DataSettings.of(cfg)
        return cls(
            prepared=prepared or load_prepared(data, missing_ok=True),
            net=cfg.model.net,
            featurizer=cfg.model.featurizer,
            cache_dir=str(cfg.data.cache_dir),
            val_fraction=data.val_fraction,
            optimizer=cfg.model.optimizer,
            local_epochs=int(cfg.client.local_epochs),
            batch_size=int(cfg.client.batch_size),
            lr=float(cfg.client.lr),
            num_threads=max(1, int(cfg.resources.num_cpus)),
            use_gpu=cfg.resources.num_gpus > 0,
            seed=int(cfg.seed),
            log_level=str(cfg.log_level),
            attack=cfg.attack,
            transport=str(cfg.transport),
            malicious=tuple(malicious_of(attack, int(cfg.num_clients), int(cfg.seed))),
            # not when Flower's clipping mod has the reply next (it reads it dense), nor in 16 bits (never sparse)
            sparse_rows=bool(cfg.sparse_updates)
            and not Privacy(mode=str(cfg.privacy.mode)).client_side
            and str(cfg.transport) == "float32",
        )

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.use_gpu and torch.cuda.is_available() else "cpu")


def step_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A seed per (run seed, round, client), so local training is reproducible in any order."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


@functools.lru_cache(maxsize=1)
def actor_model(settings: ClientSettings) -> nn.Module:
    """One model per worker process, built once and reused by every client and round it serves."""
    return instantiate(settings.net).to(settings.device)


@functools.lru_cache(maxsize=1)
def actor_optimizer(settings: ClientSettings) -> Callable[..., torch.optim.Optimizer]:
    """The run's local optimizer, a partial taking (params, lr), built once per worker process: each client
    still gets a fresh optimizer, without the config instantiated again for it (at 2,500 clients a round of
    one review each, Hydra's instantiate cost more than the optimizer)."""
    return instantiate(settings.optimizer)


def seed_generators(seed: int, device: torch.device) -> None:
    """What `torch.manual_seed` seeds that a client draws from: the CPU's generator, and the GPU's when it trains
    on one. torch.manual_seed seeds every backend's besides, at a cost per call that a round of 2,500 clients of
    one review each paid 2,500 times."""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)


@functools.lru_cache(maxsize=1)
def actor_attack(settings: ClientSettings) -> Attack:
    """The run's attack, built once per worker process."""
    return instantiate(settings.attack)


@functools.lru_cache(maxsize=1)
def configure_process(num_threads: int, log_level: str) -> None:
    """Per-process setup, once: torch threads and quiet loggers."""
    torch.set_num_threads(num_threads)
    for name in ("flwr", "ray", "transformers", "datasets"):
        logging.getLogger(name).setLevel(log_level)


class IMDBClient:
    """Trains the global model on one IMDB partition and evaluates it on the local validation split."""

    def __init__(
        self, partition_id: int, model: nn.Module, trainloader: Loader, valloader: Loader, settings: ClientSettings
    ) -> None:
        self.partition_id = partition_id
        self.model = model
        self.trainloader = trainloader
        self.valloader = valloader
        self.settings = settings

    def fit(self, weights: Weights, config: Mapping[str, Any]) -> tuple[Weights, int, dict[str, float]]:
        """Local training from `weights`: (new weights, training examples, {train-loss, fit-time})."""
        trained, num_examples, metrics = self.local_update(weights, config)
        return trained.dense(), num_examples, metrics

    def local_update(self, weights: Weights, config: Mapping[str, Any]) -> tuple[Trained, int, dict[str, float]]:
        """`fit`, its weights as training left them: a bow client's embedding as just the rows its data
        indexes, which is all a sparse reply sends (fedsim.model.indexed_rows)."""
        start = time.perf_counter()
        seed = step_seed(self.settings.seed, int(config.get("server-round", 0)), self.partition_id)
        seed_generators(seed, self.settings.device)
        self.trainloader.reseed(seed)
        with loaded(self.model, weights, self.trainloader) as (batches, trained):
            optimizer = actor_optimizer(self.settings)(self.model.parameters(), lr=self.settings.lr)
            loss = train(
                self.model,
                batches,
                self.settings.local_epochs,
                optimizer,
                self.settings.device,
                proximal_mu=float(config.get("proximal-mu", 0.0)),
            )
            update = trained()
        metrics = {"train-loss": loss, "fit-time": time.perf_counter() - start}
        return update, self.trainloader.num_examples, metrics

    def evaluate(self, weights: Weights, config: Mapping[str, Any]) -> tuple[float, int, dict[str, float]]:
        """(loss, validation examples, {accuracy}) of `weights` on the local validation split."""
        with loaded(self.model, weights, self.valloader) as (batches, _):
            loss, accuracy = evaluate(self.model, batches, self.settings.device)
        return loss, self.valloader.num_examples, {"accuracy": accuracy}


class MaliciousClient(IMDBClient):
    """An honest client whose reply the attack transforms (model poisoning).

    Data poisoning happens before, in `build_client`, on the labels its trainloader serves.
    """

    def __init__(self, attack: Attack, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attack = attack

    def local_update(self, weights: Weights, config: Mapping[str, Any]) -> tuple[Trained, int, dict[str, float]]:
        start = time.perf_counter()
        if self.attack.trains:
            trained, num_examples, metrics = super().local_update(weights, config)
            honest = trained.dense()
        else:  # replies without training; reports no training loss
            honest, num_examples, metrics = list(weights), self.trainloader.num_examples, {"train-loss": float("nan")}
        poisoned = self.attack.poison_update(
            honest, weights, self.settings.seed, int(config.get("server-round", 0)), self.partition_id
        )
        return Trained(poisoned, weights), num_examples, {**metrics, "fit-time": time.perf_counter() - start}


def build_client(settings: ClientSettings, partition_id: int, data_path: str | None = None) -> IMDBClient:
    """The client for one partition (or, given `data_path`, for a node's own data): honest, or malicious
    with poisoned labels and/or a poisoned update."""
    configure_process(settings.num_threads, settings.log_level)
    model = actor_model(settings)
    if data_path:
        trainloader, valloader = load_node_data(
            data_path,
            settings.featurizer,
            settings.cache_dir,
            settings.seed,
            settings.val_fraction,
            partition_id,
            settings.batch_size,
        )
    elif settings.prepared is None:
        raise FileNotFoundError(
            "no prepared data for this run on this node: the server prepares it in a cache "
            "its nodes share, or a node names its own with --node-config data-path=DIR"
        )
    else:
        trainloader, valloader = load_data(settings.prepared, partition_id, settings.batch_size)
    if partition_id not in settings.malicious:
        return IMDBClient(partition_id, model, trainloader, valloader, settings)
    attack = actor_attack(settings)
    if attack.poisons_data:
        trainloader.labels, _ = attack.poison_labels(trainloader.labels, trainloader.rows, settings.seed, partition_id)
    return MaliciousClient(attack, partition_id, model, trainloader, valloader, settings)


_SETTINGS: dict[str, ClientSettings] = {}


def settings_for(run_config: Mapping[str, Any]) -> ClientSettings:
    """The clients' settings for a run config, built once per worker process."""
    key = config_key(run_config)
    if key not in _SETTINGS:
        _SETTINGS.clear()  # a process serves one run at a time
        _SETTINGS[key] = ClientSettings.from_cfg(config_from(run_config))
    return _SETTINGS[key]


def client_fn(context: Context) -> IMDBClient:
    """The client of the partition in `context.node_config`, for the run in `context.run_config`; a node
    started with `--node-config "data-path=DIR"` trains and evaluates on its own data in DIR instead."""
    return build_client(
        settings_for(context.run_config), int(context.node_config["partition-id"]), context.node_config.get("data-path")
    )


ClientFn = Callable[[Context], IMDBClient]

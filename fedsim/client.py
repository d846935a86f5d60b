"""The Flower client: `IMDBClient` trains and evaluates one partition with a model kept alive per actor."""

from __future__ import annotations

import functools
import json
import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from flwr.client import Client, NumPyClient
from flwr.common import Context
from hydra.utils import instantiate
from torch import nn

from fedsim.attacks import Attack
from fedsim.data import Loader, PreparedData, load_data
from fedsim.models import get_weights, set_weights
from fedsim.train import evaluate, train


@dataclass(frozen=True)
class ClientSettings:
    """Everything a client actor needs, as plain values (it travels to Ray workers)."""

    prepared: PreparedData
    net: str  # the model.net config as JSON
    optimizer: str  # the model.optimizer config as JSON
    local_epochs: int
    batch_size: int
    lr: float
    num_threads: int
    use_gpu: bool
    seed: int
    log_level: str
    attack: str = "{}"  # the attack config as JSON; used only for the malicious partitions
    malicious: tuple[int, ...] = ()

    @property
    def device(self) -> torch.device:
        return torch.device("cuda" if self.use_gpu and torch.cuda.is_available() else "cpu")


def step_seed(seed: int, server_round: int, partition_id: int) -> int:
    """A seed per (run seed, round, client), so local training is reproducible in any order."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


@functools.lru_cache(maxsize=1)
def actor_model(net_json: str, device: str) -> nn.Module:
    """One model per actor process, built once and reused by every client and round it serves."""
    return instantiate(json.loads(net_json)).to(device)


@functools.lru_cache(maxsize=1)
def actor_attack(attack_json: str) -> Attack:
    """The run's attack, built once per actor process from its config."""
    return instantiate(json.loads(attack_json))


@functools.lru_cache(maxsize=1)
def configure_process(num_threads: int, log_level: str) -> None:
    """Per-process setup, once: torch threads and quiet loggers."""
    torch.set_num_threads(num_threads)
    for name in ("flwr", "ray", "transformers", "datasets"):
        logging.getLogger(name).setLevel(log_level)


class IMDBClient(NumPyClient):
    """Trains the global model on one IMDB partition and evaluates it on the local validation split."""

    def __init__(self, partition_id: int, model: nn.Module, trainloader: Loader, valloader: Loader,
                 settings: ClientSettings) -> None:
        self.partition_id = partition_id
        self.model = model
        self.trainloader = trainloader
        self.valloader = valloader
        self.settings = settings

    def get_parameters(self, config: dict) -> list[np.ndarray]:
        return get_weights(self.model)

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        start = time.perf_counter()
        set_weights(self.model, parameters)
        seed = step_seed(self.settings.seed, int(config.get("server_round", 0)), self.partition_id)
        torch.manual_seed(seed)
        self.trainloader.reseed(seed)
        optimizer = instantiate(json.loads(self.settings.optimizer))(self.model.parameters(), lr=self.settings.lr)
        loss = train(
            self.model,
            self.trainloader,
            self.settings.local_epochs,
            optimizer,
            self.settings.device,
            proximal_mu=float(config.get("proximal_mu", 0.0)),
        )
        metrics = {"partition_id": self.partition_id, "train_loss": loss, "fit_time_s": time.perf_counter() - start}
        return get_weights(self.model), self.trainloader.num_examples, metrics

    def evaluate(self, parameters: list[np.ndarray], config: dict) -> tuple[float, int, dict]:
        set_weights(self.model, parameters)
        loss, accuracy = evaluate(self.model, self.valloader, self.settings.device)
        return loss, self.valloader.num_examples, {"partition_id": self.partition_id, "accuracy": accuracy}


class MaliciousClient(IMDBClient):
    """An honest client whose returned weights the attack transforms (model poisoning).

    Data poisoning happens before, in `client_fn`, on the labels its trainloader serves.
    """

    def __init__(self, attack: Attack, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.attack = attack

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        start = time.perf_counter()
        server_round = int(config.get("server_round", 0))
        if self.attack.trains:
            weights, num_examples, metrics = super().fit(parameters, config)
        else:
            weights, num_examples, metrics = parameters, self.trainloader.num_examples, {"partition_id": self.partition_id}
        poisoned = self.attack.poison_update(weights, parameters, self.settings.seed, server_round, self.partition_id)
        return poisoned, num_examples, {**metrics, "fit_time_s": time.perf_counter() - start}


def build_client(settings: ClientSettings, partition_id: int) -> IMDBClient:
    """The client for one partition: honest, or malicious with poisoned labels and/or a poisoned update."""
    configure_process(settings.num_threads, settings.log_level)
    model = actor_model(settings.net, str(settings.device))
    trainloader, valloader = load_data(settings.prepared, partition_id, settings.batch_size)
    if partition_id not in settings.malicious:
        return IMDBClient(partition_id, model, trainloader, valloader, settings)
    attack = actor_attack(settings.attack)
    if attack.poisons_data:
        trainloader.labels, _ = attack.poison_labels(trainloader.labels, trainloader.rows, settings.seed, partition_id)
    return MaliciousClient(attack, partition_id, model, trainloader, valloader, settings)


def make_client_fn(settings: ClientSettings) -> Callable[[Context], Client]:
    """The `client_fn` for Flower's ClientApp, closed over the run's settings."""

    def client_fn(context: Context) -> Client:
        """Build the client for the partition in `context.node_config` (Flower calls this per message)."""
        return build_client(settings, int(context.node_config["partition-id"])).to_client()

    return client_fn

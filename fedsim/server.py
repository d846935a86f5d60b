"""The server side: central evaluation, and a recorder around any Flower strategy that writes
rounds.csv, clients.csv and layers.csv as rounds finish, archives weights, and prints one
progress line per round."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch
from flwr.common import EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, Scalar, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from torch import nn

from fedsim.archive import ArchiveWriter
from fedsim.data import Loader
from fedsim.memory import memory_mb
from fedsim.messages import parameters_as_views
from fedsim.models import set_weights
from fedsim.outputs import CsvLog
from fedsim.scrutiny import round_statistics
from fedsim.train import evaluate

EvaluateFn = Callable[[int, list[np.ndarray], dict[str, Scalar]], tuple[float, dict[str, Scalar]]]


def make_evaluate_fn(model: nn.Module, testloader: Loader, device: torch.device) -> EvaluateFn:
    """Central evaluation of the global model on the server's test split."""

    def evaluate_fn(server_round: int, weights: list[np.ndarray], config: dict[str, Scalar]) -> tuple[float, dict]:
        set_weights(model, weights)
        loss, accuracy = evaluate(model, testloader, device)
        return loss, {"accuracy": accuracy}

    return evaluate_fn


def fit_config(server_round: int) -> dict[str, Scalar]:
    """Sent to every client with each fit: the round seeds its local training."""
    return {"server_round": server_round}


def weighted_average(metrics: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """Example-weighted mean of the clients' numeric metrics (Flower's metrics aggregation hook)."""
    total = sum(n for n, _ in metrics)
    keys = {k for _, m in metrics for k, v in m.items() if isinstance(v, (int, float)) and k != "partition_id"}
    return {k: sum(n * float(m.get(k, 0.0)) for n, m in metrics) / total for k in keys} if total else {}


def _by_partition(results: list[tuple[ClientProxy, FitRes | EvaluateRes]]) -> list:
    """Results in partition order: aggregation sums in a fixed order, so reruns match bit for bit."""
    return sorted(results, key=lambda r: int(r[1].metrics.get("partition_id", -1)))


def _weighted(values: list[tuple[int, float]]) -> float | None:
    total = sum(n for n, _ in values)
    return sum(n * v for n, v in values) / total if total else None


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class RunRecorder(Strategy):
    """Wraps a Flower strategy unchanged and records each round as it completes.

    Flower's round order is fit -> central evaluate -> federated evaluate, so a round's row is
    written after its federated evaluation (or when the next round starts, if there was none).
    """

    def __init__(self, strategy: Strategy, rounds_log: CsvLog, clients_log: CsvLog, layers_log: CsvLog,
                 names: Sequence[str], num_rounds: int, archive: ArchiveWriter | None = None,
                 archive_clients: bool = False, malicious: Sequence[int] = (), attack: str = "none",
                 node_ratio: float = 0.0, scrutiny: bool = True, echo: Callable[[str], None] = print) -> None:
        self.strategy = strategy
        self.rounds_log = rounds_log
        self.clients_log = clients_log
        self.layers_log = layers_log
        self.names = list(names)
        self.num_rounds = num_rounds
        self.archive = archive
        self.archive_clients = archive_clients
        self.malicious = set(malicious)
        self.attack = attack
        self.node_ratio = node_ratio
        self.scrutiny = scrutiny
        self.echo = echo
        self.client_rows: list[dict] = []  # every clients.csv row, for the end-of-run detection baseline
        self._round_start_weights: list[np.ndarray] = []
        self.rows: list[dict] = []
        self._row: dict | None = None
        self._started = 0.0
        self._run_started = time.perf_counter()

    def __repr__(self) -> str:
        return f"RunRecorder({self.strategy!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.strategy.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        self.close_round()
        self._row, self._started = {"round": server_round}, time.perf_counter()
        self._round_start_weights = parameters_as_views(parameters) if self.scrutiny else []
        return self.strategy.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list) -> tuple[Parameters | None, dict[str, Scalar]]:
        results = _by_partition(results)
        client_ids = [int(res.metrics["partition_id"]) for _, res in results]
        archived = self.archive is not None and self.archive_clients
        weights = [parameters_as_views(res.parameters) for _, res in results] if self.scrutiny or archived else []
        update_rows: list[dict] = [{} for _ in results]
        if self.scrutiny:
            layer_rows, update_rows = round_statistics(self.names, self._round_start_weights, weights)
            self.layers_log.write([
                {"round": server_round, **row, "attack": self.attack, "malicious_node_ratio": self.node_ratio}
                for row in layer_rows
            ])
        client_rows = [
            {
                "round": server_round,
                "client_id": client_id,
                "num_examples": res.num_examples,
                "train_loss": res.metrics.get("train_loss"),
                "fit_time_s": res.metrics.get("fit_time_s"),
                "is_malicious": client_id in self.malicious,
                "attack": self.attack if client_id in self.malicious else "none",
                **stats,
            }
            for client_id, (_, res), stats in zip(client_ids, results, update_rows)
        ]
        self.clients_log.write(client_rows)
        self.client_rows += client_rows
        if archived:
            for client_id, client_weights in zip(client_ids, weights):
                self.archive.put(server_round, client_weights, client_id)
        assert self._row is not None
        self._row.update(
            train_loss=_weighted([(r.num_examples, float(r.metrics["train_loss"])) for _, r in results
                                  if "train_loss" in r.metrics]),
            num_fit_clients=len(results),
            num_failures=len(failures),
        )
        return self.strategy.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.strategy.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list) -> tuple[float | None, dict[str, Scalar]]:
        results = _by_partition(results)
        aggregated = self.strategy.aggregate_evaluate(server_round, results, failures)
        if self._row is not None:
            self._row.update(
                fed_loss=_weighted([(r.num_examples, r.loss) for _, r in results]),
                fed_accuracy=_weighted([(r.num_examples, float(r.metrics["accuracy"])) for _, r in results]),
            )
            self.close_round()
        return aggregated

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        started = time.perf_counter()
        if self.archive is not None:
            self.archive.put(server_round, parameters_to_ndarrays(parameters))
        result = self.strategy.evaluate(server_round, parameters)
        if server_round == 0:
            self._row, self._started = {"round": 0, "num_fit_clients": 0, "num_failures": 0}, started
        if result is not None and self._row is not None:
            loss, metrics = result
            self._row.update(central_loss=loss, central_accuracy=metrics.get("accuracy"))
        if server_round == 0:
            self.close_round()
        return result

    def close_round(self) -> None:
        """Write the pending round's row and its progress line."""
        if self._row is None:
            return
        row, self._row = self._row, None
        row["round_time_s"] = time.perf_counter() - self._started
        memory = memory_mb()
        row["driver_rss_mb"], row["driver_shared_mb"] = memory["rss"], memory["shared"]
        self.rounds_log.write([row])
        self.rows.append(row)
        self.echo(self._progress(row))

    def _progress(self, row: dict) -> str:
        done = row["round"]
        elapsed = time.perf_counter() - self._run_started
        eta = elapsed / done * (self.num_rounds - done) if done else float("nan")

        def fmt(key: str) -> str:
            value = row.get(key)
            return "  -   " if value is None else f"{value:.4f}"

        return (
            f"round {done:>3}/{self.num_rounds}  central_acc {fmt('central_accuracy')}  "
            f"fed_acc {fmt('fed_accuracy')}  train_loss {fmt('train_loss')}  "
            f"{row['round_time_s']:.1f}s  ETA {format_duration(eta) if done else '-'}"
        )

"""A run's outputs, one callback each, all fed by the same per-round record (pfl-research's pattern).

The round loop calls every callback's `on_round_end` in list order once per round, round 0 (the
initial model) included, then `on_run_end` once after the last round, and `close` always, even
when the run failed. Earlier callbacks may add to the record for later ones: the memory probe
and weight scrutiny come before the CSVs they fill. Adding an output means adding a callback.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from safetensors.numpy import save_file

from fedsim.archive import ArchiveWriter
from fedsim.detection import DETECTION_COLUMNS, detection_rows, mean_auc
from fedsim.memory import memory_mb
from fedsim.outputs import CLIENTS_COLUMNS, ROUNDS_COLUMNS, CsvLog, format_duration, write_csv
from fedsim.record import RoundRecord
from fedsim.scrutiny import CLIENT_STAT_COLUMNS, LAYER_COLUMNS, round_statistics


class Callback:
    """One output of a run; the defaults do nothing."""

    def on_round_end(self, record: RoundRecord) -> None:
        """Called once per round, after its central evaluation."""

    def on_run_end(self, summary: dict[str, Any]) -> None:
        """Called once after the last round; may add fields to run.json (`summary`)."""

    def close(self) -> None:
        """Release files and threads; called whether the run completed or failed."""


class MemoryProbe(Callback):
    """rounds.csv's driver_rss_mb and driver_shared_mb: the server process's memory at the round's end."""

    def on_round_end(self, record: RoundRecord) -> None:
        memory = memory_mb()
        record.metrics.update(driver_rss_mb=memory["rss"], driver_shared_mb=memory["shared"])


class WeightScrutiny(Callback):
    """layers.csv, and each update's statistics (update_norm, cosine_to_mean, ...) for clients.csv.

    Not `enabled` (scrutiny=false): layers.csv keeps only its header and nothing is computed.
    """

    def __init__(self, path: Path, attack: str, node_ratio: float, enabled: bool = True) -> None:
        self.log = CsvLog(path, LAYER_COLUMNS)
        self.ground_truth = {"attack": attack, "malicious_node_ratio": node_ratio}
        self.enabled = enabled

    def on_round_end(self, record: RoundRecord) -> None:
        if not self.enabled or not record.clients or record.start_weights is None:
            return
        layer_rows, update_rows = round_statistics(record.names, record.start_weights,
                                                   [update.weights for update in record.clients])
        self.log.write([{"round": record.server_round, **row, **self.ground_truth} for row in layer_rows])
        for update, stats in zip(record.clients, update_rows):
            update.stats.update(stats)

    def close(self) -> None:
        self.log.close()


def client_rows(record: RoundRecord) -> list[dict[str, Any]]:
    """clients.csv's rows for one round."""
    return [
        {
            "round": record.server_round,
            "client_id": update.client_id,
            "num_examples": update.num_examples,
            "train_loss": update.train_loss,
            "fit_time_s": update.fit_time_s,
            "is_malicious": update.is_malicious,
            "attack": update.attack,
            **{column: update.stats.get(column) for column in CLIENT_STAT_COLUMNS},
        }
        for update in record.clients
    ]


class ClientsCsv(Callback):
    """clients.csv: one row per client that trained in a round."""

    def __init__(self, path: Path) -> None:
        self.log = CsvLog(path, CLIENTS_COLUMNS)

    def on_round_end(self, record: RoundRecord) -> None:
        self.log.write(client_rows(record))

    def close(self) -> None:
        self.log.close()


class RoundsCsv(Callback):
    """rounds.csv: one row per round. round_time_s runs from the round's start to this row's writing."""

    def __init__(self, path: Path) -> None:
        self.log = CsvLog(path, ROUNDS_COLUMNS)

    def on_round_end(self, record: RoundRecord) -> None:
        record.metrics["round_time_s"] = record.elapsed()
        self.log.write([record.metrics])

    def close(self) -> None:
        self.log.close()


class WeightArchive(Callback):
    """weights/: the global model every round and, with `clients`, every client's returned weights."""

    def __init__(self, writer: ArchiveWriter, clients: bool) -> None:
        self.writer = writer
        self.clients = clients

    def on_round_end(self, record: RoundRecord) -> None:
        self.writer.put(record.server_round, record.global_weights)
        if self.clients:
            for update in record.clients:
                self.writer.put(record.server_round, update.weights, update.client_id)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        self.writer.close()  # raises if any file failed: the run is not complete without them

    def close(self) -> None:
        self.writer.close()


class Progress(Callback):
    """One line per round on stdout, with an ETA."""

    def __init__(self, num_rounds: int, echo: Callable[[str], None] = print) -> None:
        self.num_rounds = num_rounds
        self.echo = echo
        self.run_started: float | None = None

    def on_round_end(self, record: RoundRecord) -> None:
        if self.run_started is None:
            self.run_started = record.started
        done, row = record.server_round, record.metrics
        eta = (time.perf_counter() - self.run_started) / done * (self.num_rounds - done) if done else None

        def fmt(key: str) -> str:
            value = row.get(key)
            return "  -   " if value is None else f"{value:.4f}"

        self.echo(f"round {done:>3}/{self.num_rounds}  central_acc {fmt('central_accuracy')}  "
                  f"fed_acc {fmt('fed_accuracy')}  train_loss {fmt('train_loss')}  "
                  f"{row.get('round_time_s', record.elapsed()):.1f}s  ETA {format_duration(eta) if done else '-'}")


class RunSummary(Callback):
    """run.json's final metrics: final and best central accuracy, final losses, rounds completed."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def on_round_end(self, record: RoundRecord) -> None:
        self.rows.append(dict(record.metrics))

    def on_run_end(self, summary: dict[str, Any]) -> None:
        central = [r["central_accuracy"] for r in self.rows if r.get("central_accuracy") is not None]
        last = self.rows[-1] if self.rows else {}
        summary.update(
            final_central_accuracy=central[-1] if central else None,
            best_central_accuracy=max(central) if central else None,
            final_central_loss=last.get("central_loss"),
            final_fed_accuracy=last.get("fed_accuracy"),
            rounds_completed=max((r["round"] for r in self.rows), default=0),
        )


class DetectionCsv(Callback):
    """detection.csv at the end of the run: the unsupervised detectors scored against the attack's ground truth."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def on_round_end(self, record: RoundRecord) -> None:
        self.rows += client_rows(record)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        detection = detection_rows(self.rows)
        if detection:  # only rounds with both malicious and honest clients are scored
            write_csv(self.path, pd.DataFrame(detection, columns=DETECTION_COLUMNS))
            summary["detection_auc"] = mean_auc(detection)


class FinalModel(Callback):
    """model.safetensors: the last global model, tensors named as in the model's state_dict."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.model: dict[str, Any] = {}

    def on_round_end(self, record: RoundRecord) -> None:
        self.model = dict(zip(record.names, record.global_weights))

    def on_run_end(self, summary: dict[str, Any]) -> None:
        if self.model:
            save_file(self.model, str(self.path))

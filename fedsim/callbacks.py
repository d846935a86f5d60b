"""A run's outputs, one callback each, all fed by the same per-round record (pfl-research's pattern).

The round loop calls every callback's `on_run_start` once, then `on_round_end` in list order once
per round, round 0 (the initial model) included, then `on_run_end` once after the last round,
and `close` always, even when the run failed. Earlier callbacks may add to the record for later
ones: the memory probe and weight scrutiny come before the CSVs they fill. Adding an output
means adding a callback.

A resumed run starts each callback with the `state` it saved in the checkpoint (fedsim.checkpoint),
so its files continue exactly after the checkpoint's round.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from safetensors.numpy import save_file

from fedsim.archive import ArchiveWriter
from fedsim.detection import DETECTION_COLUMNS, detection_rows, mean_auc
from fedsim.errors import RunFailed
from fedsim.memory import memory_mb
from fedsim.outputs import CLIENTS_COLUMNS, ROUNDS_COLUMNS, CsvLog, format_duration, write_csv
from fedsim.privacy import Privacy, epsilon
from fedsim.record import FAILED, RoundRecord
from fedsim.scrutiny import CLIENT_STAT_COLUMNS, LAYER_COLUMNS, round_statistics


class Callback:
    """One output of a run; the defaults do nothing."""

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        """Called once before the first round; `saved` is this output's `state` when the run resumes."""

    def on_round_end(self, record: RoundRecord) -> None:
        """Called once per round, after its central evaluation."""

    def state(self) -> dict[str, Any]:
        """What this output needs to continue after the round just ended (plain JSON values)."""
        return {}

    def on_run_end(self, summary: dict[str, Any]) -> None:
        """Called once after the last round; may add fields to run.json (`summary`)."""

    def close(self) -> None:
        """Release files and threads; called whether the run completed or failed."""


class CsvOutput(Callback):
    """A CSV that one callback appends to each round, resumable at the end of any round."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        self.log = CsvLog(path, columns)

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        self.log.start(saved["offset"] if saved else None)

    def state(self) -> dict[str, Any]:
        return {"offset": self.log.offset}

    def close(self) -> None:
        self.log.close()


class MemoryProbe(Callback):
    """rounds.csv's driver_rss_mb and driver_shared_mb: the server process's memory at the round's end."""

    def on_round_end(self, record: RoundRecord) -> None:
        memory = memory_mb()
        record.metrics.update(driver_rss_mb=memory["rss"], driver_shared_mb=memory["shared"])


class WeightScrutiny(CsvOutput):
    """layers.csv, and each update's statistics (update_norm, cosine_to_mean, ...) for clients.csv.

    Not `enabled` (scrutiny=false): layers.csv keeps only its header and nothing is computed.
    """

    def __init__(self, path: Path, attack: str, node_ratio: float, enabled: bool = True) -> None:
        super().__init__(path, LAYER_COLUMNS)
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


def client_rows(record: RoundRecord) -> list[dict[str, Any]]:
    """clients.csv's rows for one round: each update, then each failed call, by client id."""
    updates = [
        {
            "round": record.server_round,
            "client_id": update.client_id,
            "num_examples": update.num_examples,
            "train_loss": update.train_loss,
            "fit_time_s": update.fit_time_s,
            "is_malicious": update.is_malicious,
            "attack": update.attack,
            **{column: update.stats.get(column) for column in CLIENT_STAT_COLUMNS},
            "status": "ok",
            "sim_time_s": update.sim_time_s,
            "node": update.node,
        }
        for update in record.clients
    ]
    failures = [{"round": record.server_round, "client_id": f.client_id, "is_malicious": f.is_malicious,
                 "attack": f.attack, "status": f.status, "error": f.error, "sim_time_s": f.sim_time_s}
                for f in record.failures]
    return sorted(updates, key=lambda r: r["client_id"]) + sorted(failures, key=lambda r: r["client_id"])


class ClientsCsv(CsvOutput):
    """clients.csv: one row per client that trained in a round (status ok) and per failed call."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, CLIENTS_COLUMNS)

    def on_round_end(self, record: RoundRecord) -> None:
        self.log.write(client_rows(record))


class RoundsCsv(CsvOutput):
    """rounds.csv: one row per round. round_time_s runs from the round's start to this row's writing."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, ROUNDS_COLUMNS)

    def on_round_end(self, record: RoundRecord) -> None:
        record.metrics["round_time_s"] = record.elapsed()
        self.log.write([record.metrics])


class WeightArchive(Callback):
    """weights/: the global model every round and, with `clients`, every client's returned weights.

    `writer` makes the ArchiveWriter, given where a resumed run continues (None: a fresh run).
    """

    def __init__(self, writer: Callable[[tuple[int, int] | None], ArchiveWriter], clients: bool) -> None:
        self.make_writer = writer
        self.writer: ArchiveWriter | None = None
        self.clients = clients
        self.last_round: int | None = None

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        self.writer = self.make_writer((saved["round"], saved["offset"]) if saved else None)

    def on_round_end(self, record: RoundRecord) -> None:
        self.writer.put(record.server_round, record.global_weights)
        if self.clients:
            for update in record.clients:
                self.writer.put(record.server_round, update.weights, update.client_id)
        self.last_round = record.server_round

    def state(self) -> dict[str, Any]:
        """Waits for the round's files: a checkpoint never names a round whose archive is unwritten."""
        return {"round": self.last_round, "offset": self.writer.flush()}

    def on_run_end(self, summary: dict[str, Any]) -> None:
        self.writer.close()  # raises if any file failed: the run is not complete without them

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress(Callback):
    """One line per round on stdout, with an ETA."""

    def __init__(self, num_rounds: int, echo: Callable[[str], None] = print) -> None:
        self.num_rounds = num_rounds
        self.echo = echo
        self.first: tuple[int, float] | None = None  # (round, start) of the first round this process ran

    def on_round_end(self, record: RoundRecord) -> None:
        if self.first is None:
            self.first = (record.server_round - 1 if record.server_round else 0, record.started)
        done, row = record.server_round, record.metrics
        first_round, started = self.first
        eta = (time.perf_counter() - started) / (done - first_round) * (self.num_rounds - done) if done else None

        def fmt(key: str) -> str:
            value = row.get(key)
            return "  -   " if value is None else f"{value:.4f}"

        self.echo(f"round {done:>3}/{self.num_rounds}  central_acc {fmt('central_accuracy')}  "
                  f"fed_acc {fmt('fed_accuracy')}  train_loss {fmt('train_loss')}  "
                  f"{row.get('round_time_s', record.elapsed()):.1f}s  ETA {format_duration(eta) if done else '-'}")


class RunSummary(Callback):
    """run.json's metrics: final and best central accuracy, final losses, rounds completed.

    `summary` is current after every round and handed to `publish` (run.json), so a run that fails,
    is interrupted or is killed keeps them too.
    """

    def __init__(self, publish: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.publish = publish
        self.summary: dict[str, Any] = {"final_central_accuracy": None, "best_central_accuracy": None,
                                        "final_central_loss": None, "final_fed_accuracy": None,
                                        "rounds_completed": 0}

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        self.summary.update(saved or {})

    def on_round_end(self, record: RoundRecord) -> None:
        row = record.metrics
        accuracy, best = row.get("central_accuracy"), self.summary["best_central_accuracy"]
        if accuracy is not None:
            self.summary.update(final_central_accuracy=accuracy,
                                best_central_accuracy=accuracy if best is None else max(best, accuracy))
        self.summary.update(final_central_loss=row.get("central_loss"), final_fed_accuracy=row.get("fed_accuracy"),
                            rounds_completed=record.server_round)
        if self.publish is not None:
            self.publish(dict(self.summary))

    def state(self) -> dict[str, Any]:
        return dict(self.summary)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        summary.update(self.summary)


class ClientFailures(Callback):
    """Failed client calls: each distinct error printed once, their count in run.json, and the run
    stopped once more than `max_rate` of the training calls so far have failed."""

    def __init__(self, max_rate: float, echo: Callable[[str], None] = print) -> None:
        self.max_rate = max_rate
        self.echo = echo
        self.counts = {"failed": 0, "train_failed": 0, "train_calls": 0}
        self.seen: list[str] = []

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        if saved:
            self.counts, self.seen = dict(saved["counts"]), list(saved["seen"])

    def on_round_end(self, record: RoundRecord) -> None:
        errors = [f for f in record.failures if f.is_error]
        train_failed = sum(f.status == FAILED for f in errors)
        self.counts["failed"] += len(errors)
        self.counts["train_failed"] += train_failed
        self.counts["train_calls"] += len(record.clients) + train_failed
        for failure in errors:
            if failure.error not in self.seen:
                self.seen.append(failure.error)
                phase = "train" if failure.status == FAILED else "evaluate"
                self.echo(f"warning: client {failure.client_id} failed to {phase} in round "
                          f"{record.server_round}: {failure.error} (each distinct error is printed once; "
                          "clients.csv has every failed call)")
        calls, failed = self.counts["train_calls"], self.counts["train_failed"]
        if calls and failed / calls > self.max_rate:
            raise RunFailed(f"{failed} of {calls} client training calls failed ({failed / calls:.0%}), more than "
                            f"faults.max_failure_rate={self.max_rate:g}; first error: {self.seen[0]}")

    def state(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "seen": list(self.seen)}

    def on_run_end(self, summary: dict[str, Any]) -> None:
        summary["client_failures"] = self.counts["failed"]


class DetectionCsv(Callback):
    """detection.csv at the end of the run: the unsupervised detectors, run over clients.csv, scored
    against the attack's ground truth (clients whose update arrived only)."""

    def __init__(self, path: Path, clients_csv: Path) -> None:
        self.path = path
        self.clients_csv = clients_csv

    def on_run_end(self, summary: dict[str, Any]) -> None:
        clients = pd.read_csv(self.clients_csv)
        detection = detection_rows(clients[clients.status == "ok"].to_dict("records"))
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


class PrivacyBudget(Callback):
    """rounds.csv's `epsilon` after every round, and run.json's epsilon and delta; it also carries an
    adaptive wrapper's clipping norm across a resume."""

    def __init__(self, privacy: Privacy, wrapper: Any, num_clients: int, clients_per_round: int) -> None:
        self.privacy, self.wrapper = privacy, wrapper
        self.num_clients, self.clients_per_round = num_clients, clients_per_round
        self.releases = 0  # noisy averages so far

    @property
    def epsilon(self) -> float:
        return epsilon(self.privacy.noise_multiplier, self.clients_per_round, self.num_clients, self.releases,
                       self.privacy.delta, self.privacy.sampling)

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        if saved:
            self.releases = int(saved["releases"])
            self.wrapper.clipping_norm = float(saved["clipping_norm"])

    def on_round_end(self, record: RoundRecord) -> None:
        self.releases += bool(record.clients)  # a round with updates released a noisy average
        record.metrics["epsilon"] = self.epsilon

    def state(self) -> dict[str, Any]:
        return {"releases": self.releases, "clipping_norm": float(self.wrapper.clipping_norm)}

    def on_run_end(self, summary: dict[str, Any]) -> None:
        summary.update(epsilon=self.epsilon, delta=self.privacy.delta, privacy_releases=self.releases)

"""rounds.csv and clients.csv: CSVs appended and fsync'ed row by row, resumable at the end of any round."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedsim.outputs.base import Callback, Phase
from fedsim.outputs.columns import CLIENT_STAT_COLUMNS, CLIENTS_COLUMNS, ROUNDS_COLUMNS
from fedsim.server.record import RoundRecord
from fedsim.system.errors import ConfigError


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


class CsvLog:
    """A CSV with a fixed header; every `write` lands on disk before it returns.

    Nothing is opened until `start` (or the first `write`): a fresh log writes its header, and a
    resumed one cuts the file back to `offset`, the end of the last round it had written, once its
    header is found to be this log's.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns = list(columns)
        self._file = None
        self._writer: csv.DictWriter | None = None

    def start(self, offset: int | None = None) -> None:
        if offset is None:
            self._file = open(self.path, "w", newline="", encoding="utf-8")
        else:
            self._file = open(self.path, "r+", newline="", encoding="utf-8")
            self._check_header()
            self._file.truncate(offset)
            self._file.seek(offset)
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="raise")
        if offset is None:
            self._writer.writeheader()
        self._sync()

    def _check_header(self) -> None:
        """A resumed run appends only to a file with its own columns (a resume with other callbacks that
        return metrics would write rounds.csv's rows under another header)."""
        header = next(csv.reader([self._file.readline()]), [])
        if header != self.columns:
            self._file.close()
            raise ConfigError(
                "resume",
                f"{self.path} has the columns {header} but this run writes {self.columns}; resume with the "
                "callbacks (and their round_metrics) the run started with",
            )

    @property
    def offset(self) -> int | None:
        """Bytes written so far: where a resumed run continues."""
        return self._file.tell() if self._file is not None else None

    def write(self, rows: Sequence[dict]) -> None:
        if self._writer is None:
            self.start()
        for row in rows:
            self._writer.writerow({c: _cell(row.get(c)) for c in self.columns})
        self._sync()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()


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
            "retries": update.retries,
            "retry_reason": update.retry_reason,
        }
        for update in record.clients
    ]
    failures = [
        {
            "round": record.server_round,
            "client_id": f.client_id,
            "is_malicious": f.is_malicious,
            "attack": f.attack,
            "status": f.status,
            "error": f.error,
            "sim_time_s": f.sim_time_s,
        }
        for f in record.failures
    ]
    return sorted(updates, key=lambda r: r["client_id"]) + sorted(failures, key=lambda r: r["client_id"])


class ClientsCsv(CsvOutput):
    """clients.csv: one row per client that trained in a round (status ok) and per failed call; written after the
    producers, so each update's statistics (fedsim.outputs.layer_stats.WeightScrutiny) are in it."""

    phase = Phase.WRITE

    def __init__(self, path: Path) -> None:
        super().__init__(path, CLIENTS_COLUMNS)

    def on_round_end(self, record: RoundRecord) -> None:
        self.log.write(client_rows(record))


class RoundsCsv(CsvOutput):
    """rounds.csv: one row per round, the record's metrics once complete and timed (a report: round_time_s,
    from the round's start to the end of its writers, is the session's; fedsim.outputs.phases).

    Its columns are the SPEC's, then `extra`: the metrics that user callbacks declare, in their order.
    """

    phase = Phase.REPORT

    def __init__(self, path: Path, extra: Sequence[str] = ()) -> None:
        super().__init__(path, [*ROUNDS_COLUMNS, *extra])

    def on_round_end(self, record: RoundRecord) -> None:
        self.log.write([record.metrics])

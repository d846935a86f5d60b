"""Run outputs that survive a kill: CSVs appended and fsync'ed row by row, JSON replaced atomically."""

from __future__ import annotations

import csv
import json
import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import pandas as pd

CHECKPOINT = "checkpoint.safetensors"  # fedsim.checkpoint: what a run resumes from

ROUNDS_COLUMNS = [
    "round", "central_loss", "central_accuracy", "fed_loss", "fed_accuracy", "train_loss",
    "num_fit_clients", "num_failures", "round_time_s", "driver_rss_mb", "driver_shared_mb",
    "num_dropped", "num_late", "sim_round_time_s", "epsilon",
]
CLIENTS_COLUMNS = [
    "round", "client_id", "num_examples", "train_loss", "fit_time_s", "is_malicious", "attack",
    "update_norm", "cosine_to_mean", "distance_to_median", "norm_zscore", "status", "error",
    "sim_time_s", "node",
]


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


class CsvLog:
    """A CSV with a fixed header; every `write` lands on disk before it returns.

    Nothing is opened until `start` (or the first `write`): a fresh log writes its header, and a
    resumed one cuts the file back to `offset`, the end of the last round it had written.
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
            self._file.truncate(offset)
            self._file.seek(offset)
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="raise")
        if offset is None:
            self._writer.writeheader()
        self._sync()

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


def _beside(path: Path) -> Path:
    """A temporary name beside `path`, this writer's own: concurrent runs share files such as the data
    cache's manifest."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def write_json(path: Path, data: dict) -> None:
    """Replace a JSON file atomically, so a reader never sees half of it."""
    path = Path(path)
    tmp = _beside(path)
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """Replace a CSV atomically (written beside it, fsync'ed, then renamed): never half a table."""
    path = Path(path)
    tmp = _beside(path)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        frame.to_csv(f, index=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

"""Per-round weight archive: safetensors files written by a background thread, read back lazily.

Layout under a run directory:
    weights/round_NNN/global.safetensors      the global model after round NNN (000: initial)
    weights/round_NNN/client_NNN.safetensors  a client's returned weights (archive.mode=all)
    weights/manifest.csv                      round, kind, client_id, path, num_bytes
"""

from __future__ import annotations

import fnmatch
import queue
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fedsim.outputs.base import Callback, Phase
from fedsim.outputs.columns import MANIFEST_COLUMNS
from fedsim.outputs.csv_logs import CsvLog
from fedsim.server.record import RoundRecord
from fedsim.system.errors import ConfigError
from fedsim.system.files import fsync_folder, replaced

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def select_layers(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Layer names matching any glob pattern (archive.layers)."""
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def expected_bytes(
    weights: Sequence[np.ndarray],
    names: Sequence[str],
    kept: Sequence[str],
    dtype: str,
    mode: str,
    num_rounds: int,
    clients_per_round: int,
) -> int:
    """Bytes the archive will take: kept layers x stored precision x files."""
    itemsize = 4 if dtype == "float32" else 2
    per_file = sum(
        w.size * (itemsize if np.issubdtype(w.dtype, np.floating) else w.itemsize)
        for n, w in zip(names, weights)
        if n in kept
    )
    files = {"none": 0, "global": num_rounds + 1, "all": num_rounds * (clients_per_round + 1) + 1}[mode]
    return per_file * files


def check_disk(run_dir: Path, needed: int) -> None:
    """Refuse a run whose files (`needed` bytes) would not fit the run directory's disk."""
    free = shutil.disk_usage(run_dir).free
    if needed > free:
        raise ConfigError(
            "archive.mode",
            f"the run's files (archive, checkpoint, final model) need {needed / 1e9:.2f} GB but {run_dir} has "
            f"{free / 1e9:.2f} GB free; use archive.mode=global or none, archive.dtype=float16, fewer "
            "archive.layers, or another hydra.run.dir",
        )


class ArchiveWriter:
    """Writes weights off the training path: `put` queues, a thread converts and saves.

    The queue is bounded, so a slow disk throttles the run instead of filling memory. `close`
    waits for every file, fsyncs files and folders, and re-raises any error of the writer.
    """

    def __init__(
        self,
        run_dir: Path,
        names: Sequence[str],
        layers: Sequence[str],
        dtype: str,
        max_pending: int = 2,
        resume_after: tuple[int, int] | None = None,
    ) -> None:
        """`resume_after`: (round, manifest offset) of a checkpoint; the rounds after it are removed."""
        self.run_dir = Path(run_dir)
        self.names = list(names)
        self.kept = set(select_layers(names, layers))
        self.dtype = dtype
        (self.run_dir / "weights").mkdir(parents=True, exist_ok=True)
        self.manifest = CsvLog(self.run_dir / "weights" / "manifest.csv", MANIFEST_COLUMNS)
        if resume_after is None:
            self.manifest.start()
        else:
            last_round, offset = resume_after
            self.manifest.start(offset)
            for folder in (self.run_dir / "weights").glob("round_*"):
                if int(folder.name.removeprefix("round_")) > last_round:
                    shutil.rmtree(folder)
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="archive-writer", daemon=True)
        self._thread.start()

    def put(self, server_round: int, weights: Sequence[np.ndarray], client_id: int | None = None) -> None:
        """Queue one model's weights (client_id None: the global model)."""
        if self._error is not None:
            raise RuntimeError("the archive writer failed") from self._error
        self._queue.put((server_round, list(weights), client_id))

    def _convert(self, array: np.ndarray) -> torch.Tensor:
        """Floating layers in the stored precision; integer buffers as they are."""
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        return tensor.to(DTYPES[self.dtype]) if tensor.is_floating_point() else tensor

    def _write(self, server_round: int, weights: list[np.ndarray], client_id: int | None) -> None:
        folder = self.run_dir / "weights" / f"round_{server_round:03d}"
        folder.mkdir(exist_ok=True)
        name = "global" if client_id is None else f"client_{client_id:03d}"
        path = folder / f"{name}.safetensors"
        with replaced(path) as tmp:
            save_file({n: self._convert(w) for n, w in zip(self.names, weights) if n in self.kept}, str(tmp))
        self.manifest.write(
            [
                {
                    "round": server_round,
                    "kind": "global" if client_id is None else "client",
                    "client_id": client_id,
                    "path": str(path.relative_to(self.run_dir)),
                    "num_bytes": path.stat().st_size,
                }
            ]
        )

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._write(*item)
            except BaseException as exc:  # reported by put/close on the main thread
                self._error = exc
            finally:
                self._queue.task_done()

    def flush(self) -> int:
        """Wait until every queued file is written (raising the writer's error); the manifest's offset."""
        self._queue.join()
        if self._error is not None:
            raise RuntimeError(f"archive writer failed: {self._error}") from self._error
        return self.manifest.offset

    def close(self) -> None:
        """Flush everything to disk; raise if any write failed. Closing twice is harmless."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        self.manifest.close()
        fsync_folder(self.run_dir / "weights")  # the round folders it made
        if self._error is not None:
            raise RuntimeError(f"archive writer failed: {self._error}") from self._error


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Floating tensors widened to float32 (NumPy has no bfloat16); others as they are."""
    return tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()


class Archive:
    """Read a run's archive lazily: one tensor at a time, nothing loaded until asked for."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.manifest = pd.read_csv(self.run_dir / "weights" / "manifest.csv")

    def rounds(self) -> list[int]:
        return sorted(self.manifest["round"].unique().tolist())

    def clients(self, server_round: int) -> list[int]:
        rows = self.manifest[(self.manifest["round"] == server_round) & (self.manifest["kind"] == "client")]
        return sorted(int(c) for c in rows["client_id"])

    def path(self, server_round: int, client_id: int | None = None) -> Path:
        name = "global" if client_id is None else f"client_{client_id:03d}"
        return self.run_dir / "weights" / f"round_{server_round:03d}" / f"{name}.safetensors"

    def layers(self, server_round: int | None = None) -> list[str]:
        with safe_open(str(self.path(self.rounds()[0] if server_round is None else server_round)), "pt") as f:
            return list(f.keys())

    def tensor(self, server_round: int, layer: str, client_id: int | None = None) -> np.ndarray:
        """One layer of one model, as float32 NumPy (bfloat16 and float16 are widened)."""
        with safe_open(str(self.path(server_round, client_id)), "pt") as f:
            return _as_numpy(f.get_tensor(layer))

    def iter_tensors(
        self, server_round: int, client_id: int | None = None, layers: Sequence[str] | None = None
    ) -> Iterator[tuple[str, np.ndarray]]:
        """(layer, array) pairs of one model, read one at a time."""
        with safe_open(str(self.path(server_round, client_id)), "pt") as f:
            for name in layers or list(f.keys()):
                yield name, _as_numpy(f.get_tensor(name))

    def load(self, server_round: int, client_id: int | None = None) -> dict[str, np.ndarray]:
        """A whole model as {layer: array}."""
        return dict(self.iter_tensors(server_round, client_id))


class WeightArchive(Callback):
    """weights/: the global model every round and, with `clients`, every client's returned weights.

    `writer` makes the ArchiveWriter, given where a resumed run continues (None: a fresh run). A writer: handing
    the round to the archive is part of its round_time_s.
    """

    phase = Phase.WRITE

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

"""Files that survive a kill: the one way fedsim replaces a file.

The policy, for every file a run or a collection replaces (run.json, the ledger, the collected tables,
the checkpoint, cache files, archive files, the plot): it is written under a temporary name of its
writer's own beside it (pid and thread: concurrent runs share files such as the data cache's
manifest), fsync'ed, renamed over the old one, and its folder fsync'ed. After a kill or a power cut a
reader finds the old file or the new one, whole, never half of one. Append-only logs (rounds.csv,
clients.csv, layers.csv, the archive's manifest) fsync every row instead (fedsim.outputs.csv_logs).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def _beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def fsync_folder(folder: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """`with replaced(path) as tmp:` write `tmp`; when the block ends without error, `tmp` durably replaces
    `path`. An error leaves `path` as it was and removes `tmp`."""
    path = Path(path)
    tmp = _beside(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    with replaced(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    with replaced(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_bytes(path: Path, data: bytes) -> None:
    with replaced(path) as tmp:
        tmp.write_bytes(data)

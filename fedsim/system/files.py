"""Files that survive a kill: replaced atomically, so a reader never sees half of one."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


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

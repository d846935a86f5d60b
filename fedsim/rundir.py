"""A run's directory on disk, and a collection's: the files' names, run.json's fields, its reads and writes,
and whether the run that writes it still lives.

This is the one place that spells those names (docs/reference/outputs.md lists the files for users), so a
reader of a run directory (resume, a collection's ledger, `fedsim.results`, a tracker) and its writer (the
run) cannot drift apart. It sits below every package that touches a run directory and knows nothing of how
a run is made.

Liveness: a live run refreshes run.json's `heartbeat_at` every HEARTBEAT_S (fedsim.run.info). A run that
says `running` is `dead` when its process is gone: by its pid on this host, by a heartbeat older than
STALE_AFTER_S elsewhere (a run on another node of a cluster).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from fedsim.system.files import write_json
from fedsim.system.processes import alive

# A run directory (`results/runs/...`, or `hydra.run.dir`).
RUN_JSON = "run.json"
CONFIG = "config.yaml"  # the fully resolved config: what a resume reads
ROUNDS = "rounds.csv"
CLIENTS = "clients.csv"
LAYERS = "layers.csv"
DETECTION = "detection.csv"
MODEL = "model.safetensors"  # the final global model
CHECKPOINT = "checkpoint.safetensors"  # what a resume continues from
MAIN_LOG = "main.log"
LOGS = "logs"  # the processes' logs of a deployment

# A collection's directory (`results/collections/NAME/`).
RUNS = "runs.csv"
SUMMARY = "summary.csv"
CONTRASTS = "contrasts.csv"
CONTRASTS_PLOT = "contrasts.png"
ACCURACY_PLOT = "accuracy.png"
OUTPUT_LOG = "output.log"  # each run's main.py output, as a collection captures it


class RunJson(TypedDict, total=False):
    """run.json's fields (docs/reference/outputs.md says what each means). A run adds its metrics so far
    (`final_central_accuracy`, ...) and, under DP, its privacy summary; an older fedsim may lack any field."""

    status: str  # running, completed, degraded, failed, interrupted
    runtime: str
    seed: int
    started_at: str
    finished_at: str | None
    wall_time_s: float | None
    num_clients: int
    num_rounds: int
    rounds_completed: int
    model: str
    strategy: str
    transport: str
    privacy: str
    versions: dict[str, str]
    git_commit: str | None
    device: str
    host: str
    pid: int
    heartbeat_at: float
    resumed: list[dict[str, Any]]
    restarts: list[dict[str, Any]]
    error: str
    error_type: str


def info_path(run_dir: Path) -> Path:
    return Path(run_dir) / RUN_JSON


def config_path(run_dir: Path) -> Path:
    return Path(run_dir) / CONFIG


def holds_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds a run main.py began (its config and run.json); a run refused for bad input
    has no config.yaml."""
    return config_path(run_dir).exists() and info_path(run_dir).exists()


def read_info(run_dir: Path) -> RunJson | None:
    """run.json of `run_dir`, or None where there is none (or it cannot be read: written atomically, a
    partial file means a foreign one)."""
    try:
        return json.loads(info_path(run_dir).read_text())
    except (OSError, ValueError):
        return None


def write_info(run_dir: Path, info: Mapping[str, Any]) -> None:
    """Replace run.json at once (a reader never sees half of it)."""
    write_json(info_path(run_dir), dict(info))


HEARTBEAT_S = 10.0  # how often a live run refreshes run.json's heartbeat_at


STALE_AFTER_S = 6 * HEARTBEAT_S


FINISHED = ("completed", "degraded")  # ran every round; degraded: some client calls failed


def effective_status(info: Mapping[str, Any], now: float | None = None) -> str:
    """run.json's status, with `dead` for a `running` run whose process is gone: by its pid on this host, by a
    heartbeat older than STALE_AFTER_S elsewhere."""
    status = str(info.get("status"))
    if status != "running":
        return status
    heartbeat = info.get("heartbeat_at")
    if info.get("host") == socket.gethostname() and info.get("pid") is not None:
        return "running" if alive(int(info["pid"])) else "dead"
    if heartbeat is None:
        return "running"  # written by an older fedsim: nothing to tell
    return "running" if (now or time.time()) - float(heartbeat) < STALE_AFTER_S else "dead"


def status_of(run_dir: Path) -> str | None:
    """The effective status of the run in `run_dir` (None: no readable run.json)."""
    info = read_info(run_dir)
    return None if info is None else effective_status(info)

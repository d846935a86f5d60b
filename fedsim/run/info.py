"""run.json: says truthfully whether a run is running, completed, degraded, failed or interrupted, with a
heartbeat that tells a live run from one killed with -9.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from fedsim.rundir import HEARTBEAT_S, read_info, write_info


def _versions() -> dict[str, str]:
    """Installed versions, read from package metadata (importing transformers alone takes seconds)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: version(name) for name in ("flwr", "ray", "transformers")},
    }


def git_commit() -> str | None:
    """The commit of this checkout; a process running from a copy of the app without git (Flower's
    installed app bundle) gets it from FEDSIM_GIT_COMMIT, set by the process that built the bundle."""
    if os.environ.get("FEDSIM_GIT_COMMIT"):
        return os.environ["FEDSIM_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except OSError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunInfo:
    """run.json: says truthfully whether the run is running, completed, degraded (completed, but some
    client calls failed), failed or interrupted.

    A resumed run keeps its run.json: the first start, and wall_time_s summed over invocations.
    """

    def __init__(self, run_dir: Path, cfg: DictConfig) -> None:
        self.run_dir = run_dir
        self.started = time.time()
        self.earlier_wall_s = 0.0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        alive = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat_at": self.started}
        saved = read_info(run_dir) if cfg.get("resume") is not None else None
        self.data: dict[str, Any]
        if saved is not None:
            self.data = dict(saved)
            self.earlier_wall_s = float(self.data.get("wall_time_s") or 0.0)
            self.data.update(status="running", finished_at=None, num_rounds=cfg.num_rounds, **alive)
            self.data.setdefault("resumed", []).append({"at": _now(), "from_round": None})
        else:
            self.data = self._fresh(cfg, alive)
        write_info(self.run_dir, self.data)
        threading.Thread(target=self._beat, name="run.json-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        """Refresh heartbeat_at while the run lives (effective_status tells a killed run by it)."""
        while not self._stopped.wait(HEARTBEAT_S):
            with self._lock:
                if self._stopped.is_set():
                    return
                self.data["heartbeat_at"] = time.time()
                try:
                    write_info(self.run_dir, self.data)
                except OSError as exc:  # the run directory removed under the run: the run's own writes fail next
                    print(f"warning: run.json's heartbeat stopped: {exc}", file=sys.stderr, flush=True)
                    return

    def _fresh(self, cfg: DictConfig, alive: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": "running",
            "runtime": cfg.runtime.name,
            "seed": cfg.seed,
            "started_at": _now(),
            "finished_at": None,
            "wall_time_s": None,
            "num_clients": cfg.num_clients,
            "num_rounds": cfg.num_rounds,
            "model": cfg.model.name,
            "strategy": cfg.strategy._target_,
            "transport": str(cfg.transport),
            "privacy": cfg.privacy.mode,
            "versions": _versions(),
            "git_commit": git_commit(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
            **alive,
        }

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)
            write_info(self.run_dir, self.data)

    def _wall_s(self) -> float:
        return round(self.earlier_wall_s + time.time() - self.started, 3)

    def resumed_from(self, server_round: int) -> None:
        """The checkpoint's round this invocation continues after."""
        with self._lock:
            self.data["resumed"][-1]["from_round"] = server_round
            write_info(self.run_dir, self.data)

    def restarted(self, after_round: int, why: str) -> None:
        """The run went on in this process from the checkpoint of `after_round` (-1: from the start), because
        `why` (its federation died under it: fedsim.runtimes.recovery)."""
        with self._lock:
            self.data.setdefault("restarts", []).append({"at": _now(), "after_round": after_round, "why": why})
            write_info(self.run_dir, self.data)

    def progress(self, summary: dict[str, Any]) -> None:
        """The metrics so far and the wall time to date, after every round."""
        self.update(**summary, wall_time_s=self._wall_s())

    def finish(self, status: str, **fields: Any) -> None:
        with self._lock:
            self._stopped.set()
            self.data.update(
                status=status, finished_at=_now(), heartbeat_at=time.time(), wall_time_s=self._wall_s(), **fields
            )
            write_info(self.run_dir, self.data)

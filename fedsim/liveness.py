"""Whether a run.json saying `running` belongs to a live process: its pid and heartbeat.

A run killed with -9 cannot update its run.json, so the file keeps saying `running`. The run
records its host and pid, and refreshes `heartbeat_at` every HEARTBEAT_S seconds; on its own
host a run is alive while its pid is, elsewhere while its heartbeat is recent.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Mapping

HEARTBEAT_S = 10.0
FINISHED = ("completed", "degraded")  # ran every round; degraded: some client calls failed
STALE_AFTER_S = 6 * HEARTBEAT_S


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process of that pid
        return True
    return True


def effective_status(info: Mapping[str, Any], now: float | None = None) -> str:
    """run.json's status, with `dead` for a `running` run whose process is gone."""
    status = str(info.get("status"))
    if status != "running":
        return status
    heartbeat = info.get("heartbeat_at")
    if info.get("host") == socket.gethostname() and info.get("pid") is not None:
        return "running" if pid_alive(int(info["pid"])) else "dead"
    if heartbeat is None:
        return "running"  # written by an older fedsim: nothing to tell
    return "running" if (now or time.time()) - float(heartbeat) < STALE_AFTER_S else "dead"

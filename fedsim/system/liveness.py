"""Whether a run that says it is running still is: run.json's heartbeat, read by resume, collections and
results alike."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import Any

from fedsim.system.processes import alive

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

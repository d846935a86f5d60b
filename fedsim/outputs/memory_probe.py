"""rounds.csv's driver memory columns."""

from __future__ import annotations

from fedsim.outputs.base import Callback, RoundMetrics
from fedsim.server.record import RoundRecord
from fedsim.system.memory import memory_mb


class MemoryProbe(Callback):
    """rounds.csv's driver_rss_mb and driver_shared_mb: the server process's memory at the round's end."""

    round_metrics = ("driver_rss_mb", "driver_shared_mb")

    def on_round_end(self, record: RoundRecord) -> RoundMetrics:
        memory = memory_mb()
        return {"driver_rss_mb": memory["rss"], "driver_shared_mb": memory["shared"]}

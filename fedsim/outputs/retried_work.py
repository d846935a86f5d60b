"""run.json's record of work redone: every client whose work ran again because the worker running it died."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedsim.outputs.base import Callback, Phase
from fedsim.server.record import RoundRecord


class Retries(Callback):
    """run.json's `retries` (one entry per crash: the round, the phase, the clients whose work was redone, how many
    times and why) and `client_retries` (their count), current after every round that had any; clients.csv has
    each training client's own `retries` and `retry_reason`."""

    phase = Phase.REPORT

    def __init__(self, publish: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.publish = publish
        self.entries: list[dict[str, Any]] = []

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        self.entries = list(saved["entries"]) if saved else []

    def on_round_end(self, record: RoundRecord) -> None:
        if not record.redone:
            return
        crashes: dict[tuple[str, int, str | None], list[int]] = {}
        for again in record.redone:  # the clients of one message were redone together, for one reason
            crashes.setdefault((again.phase, again.retries, again.reason), []).append(again.client_id)
        for (phase, retries, reason), clients in crashes.items():
            self.entries.append(
                {"round": record.server_round, "phase": phase, "clients": clients, "retries": retries, "reason": reason}
            )
        if self.publish is not None:
            self.publish(self.summary())

    def summary(self) -> dict[str, Any]:
        redone = sum(len(entry["clients"]) * entry["retries"] for entry in self.entries)
        return {"retries": list(self.entries), "client_retries": redone}

    def state(self) -> dict[str, Any]:
        return {"entries": list(self.entries)}

    def on_run_end(self, summary: dict[str, Any]) -> None:
        summary.update(self.summary())

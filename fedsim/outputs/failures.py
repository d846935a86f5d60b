"""Failed client calls: printed once per distinct error, counted, and a run stopped when too many fail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedsim.outputs.base import Callback, Phase
from fedsim.server.record import FAILED, RoundRecord
from fedsim.system.errors import RunFailed


class ClientFailures(Callback):
    """Failed client calls: each distinct error printed once, their count in run.json, and the run
    stopped once more than `max_rate` of the training calls so far have failed. A report: a round that stops the
    run has its rows written, not its checkpoint."""

    phase = Phase.REPORT

    def __init__(self, max_rate: float, echo: Callable[[str], None] = print) -> None:
        self.max_rate = max_rate
        self.echo = echo
        self.counts = {"failed": 0, "train_failed": 0, "train_calls": 0}
        self.seen: list[str] = []

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        if saved:
            self.counts, self.seen = dict(saved["counts"]), list(saved["seen"])

    def on_round_end(self, record: RoundRecord) -> None:
        errors = [f for f in record.failures if f.is_error]
        train_failed = sum(f.status == FAILED for f in errors)
        self.counts["failed"] += len(errors)
        self.counts["train_failed"] += train_failed
        self.counts["train_calls"] += len(record.clients) + train_failed
        for failure in errors:
            if failure.error not in self.seen:
                self.seen.append(failure.error)
                phase = "train" if failure.status == FAILED else "evaluate"
                self.echo(
                    f"warning: client {failure.client_id} failed to {phase} in round "
                    f"{record.server_round}: {failure.error} (each distinct error is printed once; "
                    "clients.csv has every failed call)"
                )
        calls, failed = self.counts["train_calls"], self.counts["train_failed"]
        if calls and failed / calls > self.max_rate:
            raise RunFailed(
                f"{failed} of {calls} client training calls failed ({failed / calls:.0%}), more than "
                f"faults.max_failure_rate={self.max_rate:g}; first error: {self.seen[0]}"
            )

    def state(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "seen": list(self.seen)}

    def on_run_end(self, summary: dict[str, Any]) -> None:
        summary["client_failures"] = self.counts["failed"]

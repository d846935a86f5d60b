"""run.json's metrics, current after every round."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedsim.outputs.base import Callback, Phase
from fedsim.server.record import RoundRecord


class RunSummary(Callback):
    """run.json's metrics: final and best central accuracy, final losses, rounds completed.

    `summary` is current after every round and handed to `publish` (run.json), so a run that fails,
    is interrupted or is killed keeps them too.
    """

    phase = Phase.REPORT

    def __init__(self, publish: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.publish = publish
        self.summary: dict[str, Any] = {
            "final_central_accuracy": None,
            "best_central_accuracy": None,
            "final_central_loss": None,
            "final_fed_accuracy": None,
            "rounds_completed": 0,
        }

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        self.summary.update(saved or {})

    def on_round_end(self, record: RoundRecord) -> None:
        row = record.metrics
        accuracy, best = row.get("central_accuracy"), self.summary["best_central_accuracy"]
        if accuracy is not None:
            self.summary.update(
                final_central_accuracy=accuracy, best_central_accuracy=accuracy if best is None else max(best, accuracy)
            )
        self.summary.update(
            final_central_loss=row.get("central_loss"),
            final_fed_accuracy=row.get("fed_accuracy"),
            rounds_completed=record.server_round,
        )
        if self.publish is not None:
            self.publish(dict(self.summary))

    def state(self) -> dict[str, Any]:
        return dict(self.summary)

    def on_run_end(self, summary: dict[str, Any]) -> None:
        summary.update(self.summary)

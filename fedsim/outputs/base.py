"""A run's outputs, one callback each, all fed by the same per-round record (pfl-research's pattern).

The round loop calls every callback's `on_run_start` once, then `on_round_end` in list order once
per round, round 0 (the initial model) included, then `on_run_end` once after the last round,
and `close` always, even when the run failed. Earlier callbacks may add to the record for later
ones: the memory probe and weight scrutiny come before the CSVs they fill. Adding an output
means adding a callback.

A resumed run starts each callback with the `state` it saved in the checkpoint (fedsim.outputs.checkpointer),
so its files continue exactly after the checkpoint's round.
"""

from __future__ import annotations

from typing import Any

from fedsim.server.record import RoundRecord


class Callback:
    """One output of a run; the defaults do nothing."""

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        """Called once before the first round; `saved` is this output's `state` when the run resumes."""

    def on_round_end(self, record: RoundRecord) -> None:
        """Called once per round, after its central evaluation."""

    def state(self) -> dict[str, Any]:
        """What this output needs to continue after the round just ended (plain JSON values)."""
        return {}

    def on_run_end(self, summary: dict[str, Any]) -> None:
        """Called once after the last round; may add fields to run.json (`summary`)."""

    def close(self) -> None:
        """Release files and threads; called whether the run completed or failed."""

"""A run's outputs, one callback each, all fed by the same per-round record (pfl-research's pattern).

The session (fedsim.outputs.phases.Outputs) calls every callback's `on_run_start` once, then
`on_round_end` once per round, round 0 (the initial model) included, then `on_run_end` once after
the last round, and `close` always, even when the run failed. Each callback declares its `phase`,
and the session runs the phases in order (within one, in the order the callbacks were given):
every producer has filled the record before any file is written from it, and the checkpointer
saves every output's state last. A producer adds per-round metrics by returning them from
`on_round_end`, under names it declares in `round_metrics`: they become rounds.csv's columns and
the trackers' scalars. Adding an output means adding a callback.

A resumed run starts each callback with the `state` it saved in the checkpoint (fedsim.outputs.checkpointer),
under its name (`state_keys`), so its files continue exactly after the checkpoint's round.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any, ClassVar

from fedsim.server.record import RoundRecord

RoundMetrics = Mapping[str, float | int | None]  # what a producer returns: metric name -> number, or None (empty)


class Phase(IntEnum):
    """When a callback sees each round; every callback of a phase runs before any of the next one's.

    PRODUCE: adds to the record: returns per-round metrics (`round_metrics`), fills each update's
        `stats` (the weight scrutiny). Producers see the record as the round loop made it, plus the
        update statistics of fedsim's own producers (they come first); no producer sees another's
        returned metrics, which the session adds to the record once every producer has run.
    WRITE: writes the round's files from the complete record (clients.csv, the weight archive, the
        final model). Then the session times the round: `round_time_s`.
    REPORT: reports the complete, timed round: rounds.csv's row, the progress line, run.json's
        metrics, the failure check, the trackers; at the run's end, what reads the written files
        (detection.csv reads clients.csv, a tracker uploads model.safetensors). The default.
    CHECKPOINT: fedsim's Checkpointer alone, after every output, so it saves each one's state.
    """

    PRODUCE = 0
    WRITE = 1
    REPORT = 2
    CHECKPOINT = 3


class Callback:
    """One output of a run; the defaults do nothing.

    `round_metrics`: the names of the per-round metrics `on_round_end` returns (rounds.csv's columns
    after the SPEC's, in this order); a callback that declares any is a producer. `phase`: None
    means PRODUCE for a callback with `round_metrics`, else REPORT.
    """

    round_metrics: ClassVar[tuple[str, ...]] = ()
    phase: ClassVar[Phase | None] = None

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        """Called once before the first round; `saved` is this output's `state` when the run resumes."""

    def on_round_end(self, record: RoundRecord) -> RoundMetrics | None:
        """Called once per round, after its central evaluation; a producer returns its metrics for the round
        (any of its `round_metrics`; one left out, or None, is an empty cell)."""

    def state(self) -> dict[str, Any]:
        """What this output needs to continue after the round just ended (plain JSON values)."""
        return {}

    def on_run_end(self, summary: dict[str, Any]) -> None:
        """Called once after the last round; may add fields to run.json (`summary`)."""

    def close(self) -> None:
        """Release files and threads; called whether the run completed or failed."""


def numbered(names: Sequence[str]) -> list[str]:
    """`names` with `#2`, `#3`, ... after the second and later of a repeated one (in the order given)."""
    seen: Counter[str] = Counter()
    keys = []
    for name in names:
        seen[name] += 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def state_keys(callbacks: Sequence[Callback]) -> list[str]:
    """Each callback's key in the checkpoint: its class's name (numbered where a class repeats). A name, not a
    place in the list, so adding or removing another output leaves every saved state where a resume finds it."""
    return numbered([type(callback).__name__ for callback in callbacks])


def phase_of(callback: Callback) -> Phase:
    """The phase `callback` runs in: its own, or the default for what it declares."""
    if callback.phase is not None:
        return Phase(callback.phase)
    return Phase.PRODUCE if callback.round_metrics else Phase.REPORT

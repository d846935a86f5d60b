"""A run's callbacks in the order they run: phase by phase (fedsim.outputs.base.Phase), fedsim's own before
the user's within a phase, the checkpointer last; producers' returned metrics collected into the record
before anything is written from it.

The order is the callbacks' declared phases, not their place in a list, so no list can put a writer
before a producer or anything after the checkpointer.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fedsim.outputs.base import Callback, Phase, phase_of, state_keys
from fedsim.outputs.columns import ROUNDS_COLUMNS
from fedsim.server.record import RoundRecord


class CallbackError(ValueError):
    """A callback that breaks the outputs' contract: a phase it may not have, a metric it did not declare."""


def _name(callback: Callback) -> str:
    return type(callback).__name__


def extra_metrics(callbacks: Sequence[Callback]) -> list[str]:
    """The per-round metrics `callbacks` declare, in their order: the columns rounds.csv adds after the SPEC's."""
    return [name for callback in callbacks for name in callback.round_metrics]


def check_callbacks(standard: Sequence[Callback], user: Sequence[Callback]) -> None:
    """Refuse callbacks whose phase or declared metrics cannot work, naming the callback and what is allowed."""
    owners: dict[str, str] = {}
    users = {id(callback) for callback in user}
    for callback in [*standard, *user]:
        phase = callback.phase
        if phase is not None and (not isinstance(phase, int) or phase not in set(Phase)):
            raise CallbackError(f"{_name(callback)}.phase is {phase!r}; allowed: a fedsim.outputs.base.Phase")
        if phase_of(callback) == Phase.CHECKPOINT:
            raise CallbackError(
                f"{_name(callback)}: Phase.CHECKPOINT is the checkpointer's alone (it saves every output's state "
                "after all of them); allowed: Phase.PRODUCE, Phase.WRITE, Phase.REPORT"
            )
        names = callback.round_metrics
        if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
            raise CallbackError(f"{_name(callback)}.round_metrics is {names!r}; allowed: a tuple of metric names")
        if names and phase_of(callback) != Phase.PRODUCE:
            raise CallbackError(
                f"{_name(callback)} declares round_metrics {list(names)} but runs in {phase_of(callback).name}, "
                "after rounds.csv's columns are filled; a callback that returns metrics runs in Phase.PRODUCE"
            )
        for name in names:
            if name in owners:
                raise CallbackError(f"{_name(callback)} declares round metric {name!r}, which {owners[name]} declares")
            if name in ROUNDS_COLUMNS and id(callback) in users:
                raise CallbackError(
                    f"{_name(callback)} declares round metric {name!r}, one of rounds.csv's own columns "
                    f"{ROUNDS_COLUMNS}; give it another name"
                )
            owners[name] = _name(callback)


def returned(callback: Callback, metrics: Any) -> dict[str, Any]:
    """What `callback.on_round_end` returned, checked: metrics it declared, each a number or None."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise CallbackError(
            f"{_name(callback)}.on_round_end returned {type(metrics).__name__}; allowed: None, or a mapping of "
            "its round_metrics to numbers"
        )
    declared = callback.round_metrics
    undeclared = [name for name in metrics if name not in declared]
    if undeclared:
        raise CallbackError(
            f"{_name(callback)}.on_round_end returned metric(s) {undeclared} it did not declare; rounds.csv's "
            f"header is written before round 0, so list every metric it returns in {_name(callback)}.round_metrics "
            f"(declared: {list(declared)})"
        )
    for name, value in metrics.items():
        if value is not None and (not isinstance(value, numbers.Real) or isinstance(value, bool)):
            raise CallbackError(f"{_name(callback)}.on_round_end returned {name}={value!r}; allowed: a number or None")
    return dict(metrics)


class Outputs:
    """The callbacks of a run: fedsim's `standard` ones and the `user`'s, then the checkpointer.

    `checkpointer` makes it from the callbacks whose state it saves, in the order they are given
    (their checkpoint keys: fedsim.outputs.base.state_keys).
    """

    def __init__(
        self,
        standard: Sequence[Callback],
        user: Sequence[Callback] = (),
        checkpointer: Callable[[list[Callback]], Callback] | None = None,
    ) -> None:
        check_callbacks(standard, user)
        given = [*standard, *user]
        self.phases = {phase: [c for c in given if phase_of(c) == phase] for phase in Phase}
        if checkpointer is not None:
            self.phases[Phase.CHECKPOINT] = [checkpointer(given)]
        self.given = given + self.phases[Phase.CHECKPOINT]  # as given: the checkpoint's keys

    @property
    def ordered(self) -> list[Callback]:
        """The callbacks as they run: phase by phase, in the order given within one."""
        return [callback for phase in Phase for callback in self.phases[phase]]

    def start(self, saved: Mapping[str, dict[str, Any]]) -> None:
        """Every output's `on_run_start`, with its state in `saved` (a checkpoint's, by state key), or None."""
        key = {id(callback): k for callback, k in zip(self.given, state_keys(self.given))}
        for callback in self.ordered:
            callback.on_run_start(saved.get(key[id(callback)]))

    def end_round(self, record: RoundRecord) -> None:
        """The round through every phase: the producers, whose metrics join the record together once all have
        run; the writers; the round's time (`round_time_s`); the reports; the checkpointer."""
        produced: dict[str, Any] = {}
        for callback in self.phases[Phase.PRODUCE]:
            produced.update(returned(callback, callback.on_round_end(record)))
        record.metrics.update(produced)
        for callback in self.phases[Phase.WRITE]:
            returned(callback, callback.on_round_end(record))  # declares nothing: refuses any metric
        record.metrics["round_time_s"] = record.elapsed()
        for callback in self.phases[Phase.REPORT] + self.phases[Phase.CHECKPOINT]:
            returned(callback, callback.on_round_end(record))

    def finish(self) -> dict[str, Any]:
        """Every output's `on_run_end`; what they add to run.json."""
        summary: dict[str, Any] = {}
        for callback in self.ordered:
            callback.on_run_end(summary)
        return summary

    def close(self) -> None:
        for callback in self.ordered:
            callback.close()

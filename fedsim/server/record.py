"""What one round produced, as the round loop hands it to every output (fedsim.outputs)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ClientUpdate:
    """One client's training reply in a round."""

    client_id: int  # the partition id
    num_examples: int
    train_loss: float | None
    fit_time_s: float | None
    weights: Sequence[np.ndarray]  # in state_dict order, decoded from the reply as read (views, or rebuilt rows)
    is_malicious: bool = False
    attack: str = "none"
    stats: dict[str, float] = field(default_factory=dict)  # update statistics, filled by weight scrutiny
    sim_time_s: float | None = None  # simulated training time, when faults use the simulated clock
    node: str | None = None  # the Ray node (simulation) or host (deployment) that trained
    retries: int = 0  # how many times its training ran again because the worker running it died
    retry_reason: str | None = None  # why, the last time


FAILED, EVAL_FAILED, DROPPED, LATE = "failed", "eval_failed", "dropped", "late"


@dataclass(frozen=True)
class Redone:
    """A client's work in a round that ran again because the worker running it died (fedsim.runtimes.recovery):
    bitwise the same work, only later."""

    client_id: int
    phase: str  # "train" or "evaluate"
    retries: int
    reason: str | None


@dataclass
class ClientFailure:
    """A client call in a round that brought no usable reply.

    `status`: failed (training raised or never replied), eval_failed (evaluation did), or the
    simulated faults (fedsim.server.faults): dropped (did not answer) or late (past the round timeout).
    """

    client_id: int
    status: str
    error: str | None = None  # the error's last line
    is_malicious: bool = False
    attack: str = "none"
    sim_time_s: float | None = None  # a late client's simulated time

    @property
    def is_error(self) -> bool:
        """A real failure, not a simulated fault."""
        return self.status in (FAILED, EVAL_FAILED)


@dataclass
class RoundRecord:
    """One round: the weights it started from and ended with, the clients' updates, and rounds.csv's row.

    Round 0 is the initial model: no clients and no start weights. The outputs' producers return the round's
    further metrics, which the session adds to `metrics` before any writer sees the record, and the weight
    scrutiny fills each update's `stats` (fedsim.outputs.phases: the order by phase).
    """

    server_round: int
    names: list[str]
    start_weights: list[np.ndarray] | None
    global_weights: list[np.ndarray]
    clients: list[ClientUpdate]
    metrics: dict[str, Any]
    started: float = field(default_factory=time.perf_counter)  # perf_counter() at the round's start
    failures: list[ClientFailure] = field(default_factory=list)
    redone: list[Redone] = field(default_factory=list)  # work that ran again, training's and evaluation's

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

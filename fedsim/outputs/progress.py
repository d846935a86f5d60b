"""One line per round on stdout, with an ETA."""

from __future__ import annotations

import time
from collections.abc import Callable

from fedsim.outputs.base import Callback, Phase
from fedsim.server.record import RoundRecord
from fedsim.system.eta import eta


class Progress(Callback):
    """One line per round on stdout, with an ETA; a report: it prints the timed round."""

    phase = Phase.REPORT

    def __init__(self, num_rounds: int, echo: Callable[[str], None] = print) -> None:
        self.num_rounds = num_rounds
        self.echo = echo
        self.first: tuple[int, float] | None = None  # (round, start) of the first round this process ran

    def on_round_end(self, record: RoundRecord) -> None:
        if self.first is None:
            self.first = (record.server_round - 1 if record.server_round else 0, record.started)
        done, row = record.server_round, record.metrics
        first_round, started = self.first
        left = eta(time.perf_counter() - started, done - first_round, self.num_rounds - done) if done else "-"

        def fmt(key: str) -> str:
            value = row.get(key)
            return "  -   " if value is None else f"{value:.4f}"

        self.echo(
            f"round {done:>3}/{self.num_rounds}  central_acc {fmt('central_accuracy')}  "
            f"fed_acc {fmt('fed_accuracy')}  train_loss {fmt('train_loss')}  "
            f"{row.get('round_time_s', record.elapsed()):.1f}s  ETA {left}"
        )

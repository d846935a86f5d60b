"""Where the simulation engine's own messages go: Ray's and Flower's, to the run's main.log.

A crash that fedsim recovers from (fedsim.runtimes.recovery) gets one line on the terminal, fedsim's; Ray
reports the same crash as a notice about the dead worker or a dump of the raylet's log, and Flower as
ERROR lines. At log_level WARNING and above, a simulation's terminal gets fedsim's lines only and main.log
gets Ray's and Flower's (their loggers, and the errors Ray's driver relays from its nodes, which it prints
from a thread of its own: `ray._private.worker.print_to_stdstream`, replaced for the run and listed in
docs/reference/patches.md). At INFO and DEBUG they stay on the terminal, as before.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENGINE_LOGGERS = ("flwr", "ray")


@contextlib.contextmanager
def engine_logs_to(log: Path, log_level: str) -> Iterator[None]:
    """For one simulation: Ray's and Flower's messages appended to `log`, unless `log_level` is INFO or DEBUG."""
    if logging.getLevelNamesMapping()[log_level] <= logging.INFO:
        yield
        return
    from ray._private import worker  # Ray only once a simulation starts

    handler = logging.FileHandler(log, delay=True)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    loggers = [logging.getLogger(name) for name in ENGINE_LOGGERS]
    kept = [(list(logger.handlers), logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [handler], False
    relays = worker.print_to_stdstream

    def to_log(data: dict[str, Any], ignore_prefix: bool) -> None:
        with contextlib.suppress(OSError), open(log, "a") as out:  # a removed run directory: nowhere
            worker.print_worker_logs(data, out, ignore_prefix)

    worker.print_to_stdstream = to_log
    try:
        yield
    finally:
        worker.print_to_stdstream = relays
        for logger, (handlers, propagate) in zip(loggers, kept):
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()

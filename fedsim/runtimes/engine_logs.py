"""Where the simulation engine's own messages go: Ray's and Flower's, to the run's main.log.

A crash that fedsim recovers from (fedsim.runtimes.recovery) gets one line on the terminal, fedsim's. Ray
reports the same crash as a notice about the dead worker, a dump of the raylet's log and its core worker's
ERROR lines, and Flower as ERROR lines. At log_level WARNING and above, a simulation's terminal gets fedsim's
lines only, and main.log gets:
- what Ray's and Flower's loggers log;
- the errors Ray's driver relays from its nodes, which it prints from a thread of its own
  (`ray._private.worker.print_to_stdstream`, replaced for the run: docs/reference/patches.md);
- what Ray's core worker, native code in this process, writes to file descriptor 2. For the run, fd 2 is
  main.log and Python's `sys.stderr` the terminal, so fedsim's own warnings still reach it.
At INFO and DEBUG everything stays on the terminal, as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedsim.system.signals import diverted

ENGINE_LOGGERS = ("flwr", "ray")


@contextlib.contextmanager
def engine_logs_to(log: Path, log_level: str) -> Iterator[None]:
    """For one simulation: Ray's and Flower's messages appended to `log`, unless `log_level` is INFO or DEBUG."""
    if logging.getLevelNamesMapping()[log_level] <= logging.INFO:
        yield
        return
    with _loggers_to(log), _relayed_errors_to(log), _native_stderr_to(log):
        yield


@contextlib.contextmanager
def _loggers_to(log: Path) -> Iterator[None]:
    handler = logging.FileHandler(log, delay=True)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    loggers = [logging.getLogger(name) for name in ENGINE_LOGGERS]
    kept = [(list(logger.handlers), logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [handler], False
    try:
        yield
    finally:
        for logger, (handlers, propagate) in zip(loggers, kept):
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()


@contextlib.contextmanager
def _relayed_errors_to(log: Path) -> Iterator[None]:
    from ray._private import worker  # Ray only once a simulation starts

    relays = worker.print_to_stdstream

    def to_log(data: dict[str, Any], ignore_prefix: bool) -> None:
        with contextlib.suppress(OSError), open(log, "a") as out:  # a removed run directory: nowhere
            worker.print_worker_logs(data, out, ignore_prefix)

    worker.print_to_stdstream = to_log
    try:
        yield
    finally:
        worker.print_to_stdstream = relays


@contextlib.contextmanager
def _native_stderr_to(log: Path) -> Iterator[None]:
    try:
        target = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:  # the run directory removed: the run's own writes fail next
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    python_stderr = sys.stderr
    sys.stderr = open(terminal, "w", buffering=1, closefd=False)  # noqa: SIM115 (closed below)
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        sys.stderr.flush()
        if not diverted():  # after a signal everything goes to main.log (fedsim.system.signals)
            os.dup2(terminal, 2)
        sys.stderr.close()
        sys.stderr = python_stderr
        os.close(terminal)

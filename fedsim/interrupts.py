"""Ctrl-C and SIGTERM: one line, run.json `interrupted`, no process left, exit 128 + the signal.

Flower's simulation runs the ServerApp in a thread that does not end until its round's replies
arrive, so after the run is recorded the process leaves with `os._exit`, having flushed its output;
Flower's engine stops Ray on its way out (its `finally`), and Ray's own SIGTERM handler, which
aborts the process, is turned off so that SIGTERM reaches Python.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType


class Interrupted(BaseException):
    """A signal asked the run to stop (a BaseException, like KeyboardInterrupt: no `except Exception` eats it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise(signum: int, frame: FrameType | None) -> None:
    """Once: a second Ctrl-C (a terminal's, then a collector's) must not cut the recording of the first."""
    for other in (signal.SIGINT, signal.SIGTERM):
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(signum)


def raise_on_signals() -> None:
    """From here on, SIGINT and SIGTERM raise Interrupted in the main thread."""
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _raise)


def leave(code: int, message: str) -> None:
    """Print `message` on stderr and exit now with `code`, output flushed, without waiting for threads
    that would never end; a closed output (the parent gone) does not stop the exit."""
    try:
        print(message, file=sys.stderr)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except OSError:
        pass
    logging.shutdown()
    os._exit(code)

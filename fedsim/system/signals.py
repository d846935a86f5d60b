"""Ctrl-C, SIGTERM and SIGHUP: one line, run.json `interrupted`, no process left, exit 128 + the signal.

Wherever the signal lands (start-up, between rounds, mid-training, mid-evaluation) the terminal gets
exactly one line. Stopping a run kills Ray's actors under Flower's worker threads, which then log
errors and tracebacks; so the moment the signal arrives, everything this process writes to stdout and
stderr goes to the run's main.log instead (nowhere, if its directory was removed), and the one line goes
to the terminal (`leave`).

Flower's simulation runs the ServerApp in a thread that does not end until its round's replies
arrive, so after the run is recorded the process leaves with `os._exit`, having flushed its output and
killed every process it started (Ray's among them); Ray's own SIGTERM handler, which aborts the
process, is turned off so that SIGTERM reaches Python.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from fedsim.system.processes import kill_descendants

# Ctrl-C, a scheduler's stop, and the terminal closing (an ssh session lost): each ends the run recorded
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(BaseException):
    """A signal asked the run to stop (a BaseException, like KeyboardInterrupt: no `except Exception` eats it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_LOG: list[Path] = []  # where output goes once a signal has arrived (the run's main.log), if known yet


_TERMINAL: list[int] = []  # a copy of the original stderr, once output is diverted


def divert_output() -> None:
    """From now on, what this process writes to fd 1 and 2 (Flower's and Ray's logs of dying actors, the
    tracebacks of threads) goes to the run's main.log, or nowhere if its directory was removed (the
    terminal still gets only its one line); `leave` still writes to the terminal."""
    if not _LOG or _TERMINAL:
        return
    try:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except OSError:
        pass
    try:
        log = os.open(_LOG[0], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        log = os.open(os.devnull, os.O_WRONLY)
    terminal = terminal_fd()
    _TERMINAL.append(os.dup(terminal))
    for fd in {1, 2, terminal}:
        os.dup2(log, fd)
    os.close(log)


def diverted() -> bool:
    """Whether this process's output goes to main.log since a signal arrived."""
    return bool(_TERMINAL)


def terminal_fd() -> int:
    """The file descriptor of Python's stderr: the terminal's, also while fd 2 goes to main.log during a
    simulation (fedsim.runtimes.engine_logs)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without one (a test's capture)
        return 2


def interrupted(signum: int) -> Interrupted:
    """The signal `signum` has arrived: later signals are ignored (a second Ctrl-C, a terminal's then a
    collector's, must not cut the recording of the first) and output goes to main.log from here on."""
    for other in STOP_SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    divert_output()
    return Interrupted(signum)


def _raise(signum: int, frame: FrameType | None) -> None:
    raise interrupted(signum)


def raise_on_signals(log: Path | None = None) -> None:
    """From here on, SIGINT and SIGTERM raise Interrupted in the main thread; `log`: where this process's
    output goes once one has arrived."""
    os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
    if log is not None:
        _LOG[:] = [Path(log)]
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _raise)


def leave(code: int, message: str | None = None) -> None:
    """Print `message` (if any) on the terminal's stderr and exit now with `code`, output flushed, every process
    this one started killed, without waiting for threads that would never end nor for Ray's and the
    interpreter's teardown; a closed output (the parent gone) does not stop the exit."""
    try:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        if message is None:
            pass
        elif _TERMINAL:
            os.write(_TERMINAL[0], f"{message}\n".encode())
        else:
            print(message, file=sys.stderr, flush=True)
    except OSError:
        pass
    logging.shutdown()
    kill_descendants()
    os._exit(code)

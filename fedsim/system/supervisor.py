"""main.py's run in a child process that main.py's own process waits for, so that however the run's process
ends, its parent hears how and the run's record can say so.

A Python process records how its run ended on every way out that runs Python: a failure, a signal, the end.
Native code can end it without that: a segfault in torch, or Ray's core worker, which ends its driver
(`_exit(1)`) when the object store it talks to goes away, as it does when the node under the driver dies.
run.json then said `running` and main.log nothing. The parent, which has only waited, gets the child's exit
status and hands it on (fedsim.cli.command records it); it passes on the signals that stop a run, and exits
with the child's code. The child dies with its parent, even by -9, so killing main.py still stops the run.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from types import FrameType

from fedsim.system.processes import die_with_parent
from fedsim.system.signals import STOP_SIGNALS


def supervised(ended: Callable[[int, int], None]) -> None:
    """Fork. The child returns at once and goes on with the command. The parent waits for it, hands
    `ended(pid, code)` every ending but SIGKILL's (`code` as subprocess gives it: negative for a signal), and
    exits with the child's code; it never returns."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        die_with_parent(signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above
            os._exit(128 + signal.SIGKILL)
        return

    def pass_on(signum: int, frame: FrameType | None) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in STOP_SIGNALS:
        signal.signal(signum, pass_on)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != -signal.SIGKILL:
        try:
            ended(child, code)
        finally:
            os._exit(code if code >= 0 else 128 - code)
    os._exit(128 + signal.SIGKILL)

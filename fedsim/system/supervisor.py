"""main.py's run in a child process that main.py's own process waits for, so that however the run's process
ends, its parent hears how and the run's record can say so.

A Python process records how its run ended on every way out that runs Python: a failure, a signal, the end.
Native code can end it without that: a segfault in torch, or Ray's core worker, which ends its driver
(`_exit(1)`) when the object store it talks to goes away, as it does when the node under the driver dies.
run.json then said `running` and main.log nothing. The parent, which has only waited, gets the child's exit
status and hands it on (fedsim.cli.command records it, and within `runtime.max_restarts` has a new child
resume the run from its checkpoint); it passes on the signals that stop a run, and exits with the last child's
code. The child dies with its parent, even by -9, so killing main.py still stops the run; what a child leaves
behind (Ray's processes, when native code ended it) the parent adopts and kills.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from fedsim.system.processes import adopt_orphans, die_with_parent, kill_descendants
from fedsim.system.signals import STOP_SIGNALS


def supervised(ended: Callable[[int, int], bool], stacks_to: Path) -> int:
    """Fork. The child returns at once and goes on with the command, its threads' stacks written to `stacks_to`
    should it end on a fatal signal (Python's faulthandler, which Ray would otherwise point at the terminal).
    The parent waits for it and hands `ended(pid, code)` every ending but SIGKILL's (`code` as subprocess gives
    it: negative for a signal); when `ended` says the run goes on, it forks again, otherwise it exits with the
    child's code; it never returns. Each child gets how many children ran before it."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    parent = os.getpid()
    child = 0
    adopt_orphans()

    def pass_on(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    started = 0
    while True:
        child = os.fork()
        if child == 0:
            die_with_parent(signal.SIGKILL)
            if os.getppid() != parent:  # the parent died before the line above
                os._exit(128 + signal.SIGKILL)
            faulthandler.enable(open(stacks_to, "a"), all_threads=True)  # noqa: SIM115 (open as long as the process)
            return started
        if started == 0:
            for signum in STOP_SIGNALS:
                signal.signal(signum, pass_on)
        _, status = os.waitpid(child, 0)
        code = os.waitstatus_to_exitcode(status)
        kill_descendants()  # what the child left (a dead driver's Ray processes), adopted by this process
        if code == -signal.SIGKILL:
            os._exit(128 + signal.SIGKILL)
        again = False
        try:
            again = ended(child, code)
        finally:
            if not again:
                os._exit(code if code >= 0 else 128 - code)
        started += 1

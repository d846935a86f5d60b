"""A collection's runner: one long-lived process that makes run after run of main.py, as the collection hands
them over, paying the driver's imports, Ray's start and the client actors' start once (fedsim.runtimes.warm).

    python -m fedsim.cli.warm_runner MAIN_PY REPLY_FD

Each line on stdin is one run: `{"argv": [main.py's arguments], "log": its output log, "run_dir": ...}`. The
runner sends the run's output (fd 1 and 2) to its log, executes main.py exactly as `python main.py ARGV` would
(`runpy`, so Hydra sees main.py as the calling file: the same config path and job name), and writes `0` and a
newline to REPLY_FD when the run has completed. A run that does not complete ends this process as it would
end main.py, with main.py's exit status and its one line: a failed run's ServerApp thread may never end, and
the next run must not inherit anything of it. The collection then starts a fresh runner for its next run.
After a run that ended `degraded`, the warm actors are ended too (one may have died): the next run starts its
own. End of stdin ends the runner, and so does SIGINT or SIGTERM between runs; it leaves as main.py does once
its results are on disk, killing Ray's processes rather than waiting for Ray's shutdown.
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import signal
import sys
from pathlib import Path
from types import FrameType

from fedsim.rundir import read_info
from fedsim.runtimes.warm import cool, kept_warm
from fedsim.system.signals import STOP_SIGNALS, Interrupted, leave


def output_to(log: Path | str) -> None:
    """Everything this process writes to fd 1 and 2 from now on goes to `log` (appended)."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)


def closed_logs() -> None:
    """The run's log files closed: Hydra opens the next run's main.log only after it has logged its first lines,
    which must not reach this run's."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


def _idle_signal(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def completed(run_dir: Path) -> bool:
    """Whether the run in `run_dir` ended `completed` (run.json)."""
    info = read_info(run_dir)
    return info is not None and info.get("status") == "completed"


def run_main(main_script: str, argv: list[str]) -> None:
    """main.py with `argv`, as `python main.py ARGV` runs it; returns only if the run completed or degraded
    (every other ending leaves the process, as main.py does)."""
    sys.argv = [main_script, *argv]
    try:
        runpy.run_path(main_script, run_name="__main__")
    except SystemExit as exc:  # Hydra's own exits (a composition error): main.py would have ended with it too
        leave(exc.code if isinstance(exc.code, int) else 1)


def serve(main_script: str, reply_fd: int) -> None:
    """Run what stdin hands over until it ends."""
    with os.fdopen(reply_fd, "w") as replies, kept_warm(end=False):
        for line in sys.stdin:
            request = json.loads(line)
            output_to(request["log"])
            run_main(main_script, request["argv"])
            for signum in STOP_SIGNALS:  # main.py's handlers are for its run
                signal.signal(signum, _idle_signal)
            if not completed(Path(request["run_dir"])):
                cool()
            closed_logs()
            output_to(os.devnull)
            replies.write("0\n")
            replies.flush()


def main(argv: list[str]) -> None:
    """Serve runs until stdin ends or a signal comes between runs; then leave as main.py does once its results
    are on disk: Ray's processes killed, not shut down."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _idle_signal)
    main_script, reply_fd = argv
    try:
        serve(main_script, int(reply_fd))
    except Interrupted as exc:
        leave(exc.exit_code)
    leave(0)


if __name__ == "__main__":
    main(sys.argv[1:])

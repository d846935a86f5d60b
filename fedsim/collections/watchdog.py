"""`python -m fedsim.collections.watchdog PID:CREATED CWD LOG -- COMMAND...`: run COMMAND in CWD, its output into
LOG, while process PID lives.

A collection's run submitted as a Ray job is no child of run_and_collect, so the kernel cannot stop it when
the collector dies. This wrapper, the job's entrypoint on the collector's machine, does: once the collector
is gone (even killed with -9), the run is sent SIGTERM, as a local run is (fedsim.system.processes.die_with_parent),
records itself `interrupted` and exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from fedsim.system.processes import die_with_parent, started_at

POLL_S = 0.5


def alive(pid: int, started: float) -> bool:
    """Whether process `pid`, started at `started` (not a later process given the same pid), still runs."""
    return started_at(pid) == started


def tag() -> str:
    """This process as the tether's first argument: its pid and creation time."""
    return f"{os.getpid()}:{started_at(os.getpid())!r}"


def main(argv: list[str]) -> int:
    pid, started = argv[0].split(":")
    cwd, log = argv[1], argv[2]
    command = argv[argv.index("--") + 1 :]
    if not alive(int(pid), float(started)):
        return 128 + signal.SIGTERM  # the collector is gone already: nothing to run for
    os.chdir(cwd)
    with open(log, "a") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    for signum in (signal.SIGINT, signal.SIGTERM):  # Ray's stop_job signals the whole group: the run too
        signal.signal(signum, lambda *_: None)
    while child.poll() is None:
        if not alive(int(pid), float(started)):
            child.send_signal(signal.SIGTERM)
            child.wait()
            break
        time.sleep(POLL_S)
    code = child.returncode
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

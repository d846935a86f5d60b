"""Finding processes the tests started, by what they carry (psutil): a command line, an environment variable.

Every process a test starts inherits SESSION, which conftest.py sets once per test session (per pytest-xdist
worker: each worker is a session of its own). What a test looks for among all processes it looks for among its
session's alone: the machine, and the other worker, may run Ray, SuperLinks and runs of their own meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import psutil

SESSION = "FEDSIM_TEST_SESSION"


def processes(where: Callable[[psutil.Process], bool]) -> list[psutil.Process]:
    """Live processes (zombies aside) for which `where` holds."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and where(process):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def mentioning(text: str) -> list[psutil.Process]:
    """Processes whose command line mentions `text` (a run directory, `raylet`)."""
    return processes(lambda p: text in " ".join(p.cmdline()))


def ours(where: Callable[[psutil.Process], bool]) -> list[psutil.Process]:
    """This test session's processes for which `where` holds."""
    mark = os.environ[SESSION]
    return processes(lambda p: p.environ().get(SESSION) == mark and where(p))

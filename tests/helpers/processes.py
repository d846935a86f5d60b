"""Finding processes the tests started, by what they carry (psutil): a command line, an environment variable."""

from __future__ import annotations

from collections.abc import Callable

import psutil


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


def carrying(variable: str, value: str | None = None) -> list[psutil.Process]:
    """Processes whose environment holds `variable` (with `value`, if given)."""
    return processes(lambda p: variable in (env := p.environ()) and (value is None or env[variable] == value))

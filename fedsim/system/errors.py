"""fedsim's errors: bad user input (it names the config key and what is allowed), and a run that cannot go on."""

from __future__ import annotations

import traceback


class ConfigError(ValueError):
    """A config value that cannot work; `main` prints it as one line and exits with status 2."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class RunFailed(RuntimeError):
    """A run that cannot go on (its clients failed); its message is the run's one-line error."""


def first_line(exc: BaseException) -> str:
    """An exception's message as one line (its first), or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def error_line(exc: BaseException) -> str:
    """An exception as its traceback's last line, `Type: message` (a message's first line only): what a client's
    failure is recorded as, once per client instead of a traceback per client and round."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[0]

"""The one wait with a deadline: poll until something is ready, or stop with one line that names what was
awaited and the key that sets how long. Nothing in fedsim waits without one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from fedsim.system.errors import RunFailed

T = TypeVar("T")


class TimedOut(RunFailed):
    """What a run waited for did not come within its deadline."""


def wait_for(
    ready: Callable[[], T],
    *,
    timeout_s: float,
    what: str,
    key: str,
    poll_s: float = 0.2,
    hint: Callable[[], str] | None = None,
) -> T:
    """Call `ready` every `poll_s` seconds until it returns something truthy, and return that.

    After `timeout_s` seconds: TimedOut, `gave up waiting for WHAT after N s (KEY sets how long)`, with
    `hint()` (e.g. the last line of a log) appended. `ready` may raise to give up early.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = ready()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = hint() if hint is not None else ""
            raise TimedOut(
                f"gave up waiting for {what} after {timeout_s:g} s ({key} sets how long)"
                + (f": {detail}" if detail else "")
            )
        time.sleep(poll_s)

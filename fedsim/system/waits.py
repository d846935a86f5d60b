"""The one wait with a deadline: poll until something is ready, or stop with one line that names what was
awaited and the key that sets how long. Nothing in fedsim waits without one.

`wait_until` is the loop itself: it returns at the deadline instead of raising, for a caller that goes on
with what it has (replies that did not come are recorded as failures; a federation of the wrong size is
refused in its own words). `wait_for` is `wait_until` that raises TimedOut at the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from fedsim.system.errors import RunFailed

T = TypeVar("T")


class TimedOut(RunFailed):
    """What a run waited for did not come within its deadline."""


def wait_until(ready: Callable[[], T], *, timeout_s: float, poll_s: float = 0.2) -> T:
    """Call `ready` every `poll_s` seconds until it returns something truthy or `timeout_s` seconds have
    passed; its last result: truthy if it came in time, falsy if the deadline came first. Never raises
    at the deadline (`ready` may raise to give up early).

    `ready` is called at least once, and once more at or after the deadline. `timeout_s=math.inf`: a wait
    that something else ends (a run's job, ended by the run's own deadlines).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = ready()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(poll_s)


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
    result = wait_until(ready, timeout_s=timeout_s, poll_s=poll_s)
    if result:
        return result
    detail = hint() if hint is not None else ""
    raise TimedOut(
        f"gave up waiting for {what} after {timeout_s:g} s ({key} sets how long)" + (f": {detail}" if detail else "")
    )

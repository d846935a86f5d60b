"""A reply's record of work redone: how many times its clients' work ran again because the worker running it
died, and why. The runtime that redid the work adds it (fedsim.runtimes.recovery); the server takes it off
the reply before a strategy sees it (fedsim.server.cohort). On a carried reply it holds for every client the
reply carries (fedsim.messages.carried): they were redone together."""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ConfigRecord, Message

RETRIES = "retries"


@dataclass(frozen=True)
class Retried:
    """Work redone: `count` times, the last time because of `reason` (the crash's one line)."""

    count: int = 0
    reason: str | None = None


def mark_retried(reply: Message, retried: Retried) -> None:
    """Record on `reply` that its work was redone."""
    reply.content[RETRIES] = ConfigRecord({"count": int(retried.count), "reason": str(retried.reason or "")})


def take_retries(reply: Message) -> Retried:
    """The reply's record of work redone (none: count 0), taken off the reply."""
    if reply.has_error() or RETRIES not in reply.content:
        return Retried()
    record = reply.content[RETRIES]
    del reply.content[RETRIES]
    return Retried(int(record["count"]), str(record["reason"]) or None)

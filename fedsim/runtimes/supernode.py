"""Flower's SuperNode with its idle waits cut short: `python -m fedsim.runtimes.supernode ARGS` takes
flower-supernode's arguments.

Flower 1.42's SuperNode sleeps 3 s after every poll that brought no message, and 0.5 s while it waits
for its ClientApp's reply; a localhost round of two messages per client (train, evaluate) spent most of
its time in those sleeps. Flower has no setting for them, so this launcher gives the SuperNode's loop a
`time` whose sleeps are short: at most IDLE_S between polls of the SuperLink, and LOCAL_S between looks
at its own state for the reply. Each poll is one request to the SuperLink: with IDLE_S = 0.1 a node asks
ten times a second while idle, cheap on one machine and for the few nodes fedsim starts.

Its heartbeats come every 10 s, Flower's shortest interval (its default is 30 s), so that a node that died
holding a message is counted offline within 20 s, when the server sends the message again once the node is
back (fedsim.server.participation) and the local federation may start it again (fedsim.runtimes.federation).

The node's own retries for a message's parts come every IDLE_S too (fedsim.runtimes.superexec.short_pulls).
It runs with `--isolation process`: its SuperExec, fedsim.runtimes.superexec's (Flower's, each ClientApp
process forked from a warm one), is started beside it by the federation (fedsim.runtimes.federation).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from flwr.common.constant import HEARTBEAT_MIN_INTERVAL
from flwr.supercore import heartbeat
from flwr.supernode import fleet_http_connection, start_client_internal
from flwr.supernode.cli import flower_supernode

from fedsim.runtimes.superexec import IDLE_S, short_pulls

LOCAL_S = 0.01  # between looks at the node's own state for its ClientApp's reply


class ShortSleeps:
    """The `time` module as the SuperNode's loop sees it: a sleep between polls of the SuperLink (Flower's 3 s,
    each poll a request) lasts at most IDLE_S; one between looks at the node's own state for its ClientApp's
    reply (Flower's 0.5 s, a read in memory) at most LOCAL_S."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, IDLE_S if seconds >= 1 else LOCAL_S))


def main() -> None:
    fleet_http_connection.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_MIN_INTERVAL  # what it tells the SuperLink
    heartbeat.HEARTBEAT_DEFAULT_INTERVAL = HEARTBEAT_MIN_INTERVAL  # how often it sends them
    start_client_internal.time = ShortSleeps()
    short_pulls()
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()

"""A local federation's SuperNodes watched: before the run, every one joined and its warm worker ready; while
the run goes on, each one that dies started again (fedsim.runtimes.federation.LocalFederation uses both)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Protocol, TextIO

from fedsim.client.wire import READY
from fedsim.runtimes.process_logs import JOINED, hint, reason
from fedsim.system.errors import RunFailed
from fedsim.system.processes import Child
from fedsim.system.waits import wait_for

KEEP_S = 0.5  # how often the SuperNodes are looked at while the run goes on
RESTART_RETRY_S = 5.0  # how long a restarted SuperNode that did not join waits before the next try


def wait_workers(workers: list[Child], timeout_s: float) -> None:
    """Every warm worker listening on its socket, or the first one's reason for stopping."""

    def ready() -> bool:
        for worker in workers:
            if not worker.alive():
                raise RunFailed(f"{worker.name} stopped at start: {reason(worker.log_tail())} (see {worker.log})")
        return all(any(READY in line for line in w.log_tail()) for w in workers)

    wait_for(ready, timeout_s=timeout_s, what="every SuperNode's warm worker to start", key="runtime.startup_timeout_s")


def wait_joined(nodes: list[Child], timeout_s: float) -> None:
    """Every SuperNode accepted by the SuperLink, or a one-line reason why one was not."""
    waiting = list(nodes)

    def joined() -> bool:
        for node in list(waiting):
            lines = node.log_tail()
            if any(JOINED in line for line in lines):
                waiting.remove(node)
            elif not node.alive():
                why = reason(lines)
                raise RunFailed(f"{node.name} was refused{hint(why)}: {why} (see {node.log})")
        return not waiting

    wait_for(
        joined,
        timeout_s=timeout_s,
        what="every SuperNode to join the SuperLink",
        key="runtime.startup_timeout_s",
        hint=lambda: f"{waiting[0].name}: {reason(waiting[0].log_tail())} (see {waiting[0].log})",
    )


class Nodes(Protocol):
    """What keeping the SuperNodes alive needs of the federation: its nodes, its restart budget, a way to start
    node `partition_id` again."""

    num_nodes: int
    supernodes: list[Child]
    restarts: int
    max_restarts: int

    def own_supernode(self, partition_id: int, attempt: int = 0) -> Child: ...


@contextlib.contextmanager
def nodes_kept(federation: Nodes, out: TextIO) -> Iterator[None]:
    """While the run goes on: a SuperNode that dies is started again, up to `max_restarts` times in all, with
    one line on `out`; the server sends its client's message again once it is back (fedsim.server.
    participation). Flower's SuperLink refuses a node's key while it still counts the dead node online (up
    to two heartbeats, fedsim.runtimes.supernode), so a restart that does not join is tried again every
    RESTART_RETRY_S."""
    stop = threading.Event()
    attempts = [0] * federation.num_nodes
    next_try = [0.0] * federation.num_nodes

    def keep() -> None:
        while not stop.wait(KEEP_S):
            for i, node in enumerate(federation.supernodes):
                if node.alive() or time.monotonic() < next_try[i] or attempts[i] < 0:
                    continue
                if any(JOINED in line for line in node.log_tail()):  # it had joined: a crash
                    federation.restarts += 1
                    budget = f"runtime.max_restarts={federation.max_restarts}"
                    if federation.restarts > federation.max_restarts:
                        attempts[i] = -1
                        print(
                            f"warning: {node.name} (pid {node.pid}) died: not started again ({budget} used); "
                            "its clients fail",
                            file=out,
                            flush=True,
                        )
                        continue
                    print(
                        f"warning: {node.name} (pid {node.pid}) died; started again (restart {federation.restarts} "
                        f"of {budget}), its message is sent again once it is back",
                        file=out,
                        flush=True,
                    )
                attempts[i] += 1
                next_try[i] = time.monotonic() + RESTART_RETRY_S
                federation.supernodes[i] = federation.own_supernode(i, attempts[i])

    keeper = threading.Thread(target=keep, name="supernodes-kept", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()

"""Crashes that cost time, not results, in Flower's Ray-backed simulation: a client worker that dies is
replaced and its work redone; a Ray instance that dies is noticed at once, so the run can start a new one.

Every client's work is a pure function of (seed, round, client), so work redone is, to the bit, the work
that was lost; what a crash costs is the time to redo it.

A client actor dies when the out-of-memory killer or a crash in native code ends its process. Flower 1.42's
RayBackend then puts the dead actor back into its pool, so every later message routed to it fails too.
fedsim's `process_message` (in place of Flower's for a run, `retried`; docs/reference/patches.md) drops the
dead actor, adds a new one to the pool, and sends the same message again, up to `runtime.max_retries` times;
a carried message (fedsim.messages.carried) redoes all the clients it carries. The reply records the retries
(fedsim.messages.retries) for clients.csv and run.json, and the terminal gets one line per crash. Beyond the
budget the message's clients are recorded failed, with the crash as their error.

A Ray instance dies with its raylet or GCS (an agent that shares their fate takes the raylet with it), and a
cluster's with its head. Ray itself tells the driver late, or never: a task on a dead node fails only once the
GCS has missed its heartbeats, and a driver whose GCS is gone is ended by Ray's core worker a minute later,
with nothing recorded. `RayWatch` looks at the instance's processes (or a cluster's head) instead; once it is
gone, the ServerApp's next call to the grid raises NodeLost (`WatchedGrid`), which ends the simulation, and
the simulation runtime (fedsim.runtimes.simulation) starts a new private Ray instance and resumes from the last
checkpoint (a cluster's run ends, naming the command that resumes it).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psutil
from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode

from fedsim.messages.carried import partitions_of
from fedsim.messages.retries import Retried, mark_retried
from fedsim.runtimes.ports import knock
from fedsim.system.processes import alive, descendants

POLL_S = 0.2  # how often a client's pending work and the Ray instance are looked at
RAY_PROCESSES = ("raylet", "gcs_server")  # a private instance lives as long as both do
HEAD_CHECK_S = 1.0  # how often a cluster's head is asked whether it answers


class NodeLost(RuntimeError):
    """The Ray instance the simulation ran on is gone (its raylet or GCS died, or a cluster's head stopped
    answering): the simulation cannot go on, and a new instance can resume it."""


class RayWatch:
    """Whether the Ray instance this process is connected to still lives: a private instance by its raylet and
    GCS processes (this process's children), a cluster (`address`) by its head's GCS port answering."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self.tree: list[psutil.Process] | None = None  # a private instance's processes, once seen alive
        self.vital: dict[str, int] = {}  # its raylet's and GCS's pids, by name
        self._lock = threading.Lock()
        self._checked = 0.0
        self._lost: str | None = None

    def lost(self) -> str | None:
        """What died, in a few words, or None while the instance lives (or has not started yet)."""
        import ray  # Ray only once a simulation starts

        with self._lock:
            if self._lost is not None or not ray.is_initialized():
                return self._lost
            if self.address is None:
                self._lost = self._process_died()
            elif time.monotonic() - self._checked >= HEAD_CHECK_S:
                self._checked = time.monotonic()
                self._lost = _head_unreachable(ray.get_runtime_context().gcs_address)
            return self._lost

    def _process_died(self) -> str | None:
        if self.tree is None:
            self.tree = ray_descendants()
            self.vital = {p.name(): p.pid for p in self.tree if p.name() in RAY_PROCESSES}
        for name, pid in self.vital.items():
            if not alive(pid):
                return f"Ray's {name} (pid {pid}) died"
        return None

    def node_dead(self) -> str | None:
        """After a client actor died: whether its whole node did (a raylet going down because an agent that
        shares its fate died, say), which Ray's GCS knows before the raylet's process has ended. Touching Ray
        then (a new actor, a task) would make Ray's core worker end this process."""
        import ray  # Ray only once a simulation starts

        if (lost := self.lost()) is not None:
            return lost
        here = ray.get_runtime_context().get_node_id()
        if any(node["NodeID"] == here and not node["Alive"] for node in ray.nodes()):
            with self._lock:
                self._lost = f"Ray's node {here[:8]} died"
        return self._lost

    def check(self) -> None:
        """NodeLost if the instance is gone."""
        if (lost := self.lost()) is not None:
            raise NodeLost(lost)


def _head_unreachable(gcs_address: str) -> str | None:
    try:
        knock(gcs_address, HEAD_CHECK_S)
    except OSError as exc:
        return f"the Ray cluster's head at {gcs_address} stopped answering ({exc.strerror or exc})"
    return None


def ray_descendants() -> list[psutil.Process]:
    """This process's descendants that are Ray's (its raylet, GCS, agents, monitors and workers)."""
    found = []
    for pid in descendants(os.getpid()):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            process = psutil.Process(pid)
            line = " ".join(process.cmdline())
            if process.name() in RAY_PROCESSES or line.startswith("ray::") or f"{os.sep}ray{os.sep}" in line:
                found.append(process)
    return found


def end_leftovers(watch: RayWatch) -> None:
    """Kill what is left of a dead private Ray instance: with its raylet or GCS gone, Ray's shutdown leaves
    agents, monitors and workers that would outlive the run (their parent dead, they are no longer this
    process's descendants, so the instance's processes are the ones `watch` saw while it lived)."""
    for process in {*(watch.tree or []), *ray_descendants()}:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running():
                process.kill()


class WatchedGrid:
    """The grid the ServerApp runs its rounds on, which raises NodeLost once the Ray instance is gone: the
    server waits for its replies by polling the grid, so a lost instance ends the round at its next poll
    instead of at its reply timeout."""

    def __init__(self, grid: Any, watch: RayWatch) -> None:
        self._grid, self._watch = grid, watch

    def push_messages(self, messages: Any) -> Any:
        self._watch.check()
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Any) -> Any:
        self._watch.check()
        return self._grid.pull_messages(message_ids)

    def get_node_ids(self) -> Any:
        self._watch.check()
        return self._grid.get_node_ids()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def crash_line(died: BaseException) -> str:
    """Ray's report of a dead actor, in a few words: its process and how it ended."""
    text = str(died)
    pid = re.search(r"\bpid: (\d+)", text)
    how = re.search(r"Worker exit type: (\w+)", text)
    return f"the Ray worker{f' (pid {pid.group(1)})' if pid else ''} died{f' ({how.group(1)})' if how else ''}"


def clients_named(partitions: Sequence[int]) -> str:
    return f"client{'s' if len(partitions) > 1 else ''} {', '.join(map(str, partitions))}"


def _run(actor: Any, app_fn: Any, message: Message, cid: str, context: Context) -> Any:
    return actor.run.remote(app_fn, message, cid, context)


def _result(pool: Any, future: Any, watch: RayWatch) -> tuple[Message, Context]:
    """The actor's reply once it comes; NodeLost as soon as the Ray instance is gone (Ray would tell late)."""
    import ray  # Ray only once a simulation starts

    while not ray.wait([future], timeout=POLL_S)[0]:
        watch.check()
    return pool.fetch_result_and_return_actor_to_pool(future)


@contextlib.contextmanager
def retried(max_retries: int, watch: RayWatch) -> Iterator[None]:
    """For one simulation: Flower's RayBackend processes each message through `process_message` below."""
    from flwr.server.superlink.fleet.vce.backend import raybackend  # Flower's simulation, starting now
    from ray.exceptions import RayActorError

    backend_class = raybackend.RayBackend
    flowers = backend_class.process_message

    def process_message(self: Any, message: Message, context: Context) -> tuple[Message, Context]:
        """Flower's `process_message`, with a dead actor replaced and its message sent again."""
        cid = str(context.node_config[raybackend.PARTITION_ID_KEY])
        retries, reason = 0, None
        while True:
            future = self.pool.submit(_run, (self.app_fn, message, cid, context))
            try:
                reply, updated = _result(self.pool, future, watch)
            except RayActorError as died:
                self.pool._future_to_actor.pop(future, None)  # the dead actor leaves the pool for good
                if (lost := watch.node_dead()) is not None:  # not a worker's crash: the whole instance's
                    raise NodeLost(lost) from None
                self.pool.pool.append(self.pool.create_actor_fn())
                reason = crash_line(died)
                if retries >= max_retries:
                    return Message(Error(ErrorCode.UNKNOWN, given_up(reason, max_retries)), reply_to=message), context
                retries += 1
                announce(message, context, reason, retries, max_retries)
                continue
            except BaseException:
                if future in self.pool._future_to_actor:
                    self.pool.add_actor_back_to_pool(future)
                raise
            if retries:
                mark_retried(reply, Retried(retries, reason))
            return reply, updated

    backend_class.process_message = process_message
    try:
        yield
    finally:
        backend_class.process_message = flowers


def given_up(reason: str, max_retries: int) -> str:
    return f"{reason}; no retry left (runtime.max_retries={max_retries})"


def announce(message: Message, context: Context, reason: str, retry: int, max_retries: int) -> None:
    """The terminal's one line for a crash whose work is redone."""
    config = message.content["config"] if "config" in message.content else {}
    server_round = int(config.get("server-round", 0))
    work = "training" if message.metadata.message_type.startswith("train") else "evaluating"
    print(
        f"warning: round {server_round}: {reason} while {work} "
        f"{clients_named(partitions_of(message, context))}; their work is redone on a new worker "
        f"(retry {retry} of runtime.max_retries={max_retries}, results unchanged)",
        file=sys.stderr,
        flush=True,
    )

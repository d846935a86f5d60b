"""The one wait with a deadline (fedsim.system.waits), on a fake clock: `wait_until` returns at the deadline with
what it last saw, `wait_for` is the same loop raising TimedOut there; and the loops built on them (a round's
replies, the federation's nodes, a process's end) keep their deadlines."""

from __future__ import annotations

import math

import pytest

import fedsim.system.waits
from fedsim.system.waits import TimedOut, wait_for, wait_until


class Clock:
    """time.monotonic and time.sleep for fedsim.system.waits: sleeping moves the clock, nothing else does."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(fedsim.system.waits, "time", fake)
    return fake


def calls(*results):
    """A `ready` that returns `results` one by one (the last one ever after), and the list of its calls."""
    seen: list[int] = []

    def ready():
        seen.append(len(seen))
        return results[min(len(seen), len(results)) - 1]

    return ready, seen


def test_wait_until_returns_the_first_truthy_result_without_sleeping_after_it(clock):
    ready, seen = calls(None, 0, "", "ready", "later")
    assert wait_until(ready, timeout_s=60, poll_s=0.5) == "ready"
    assert len(seen) == 4 and clock.sleeps == [0.5, 0.5, 0.5]


def test_wait_until_returns_its_last_falsy_result_at_the_deadline_and_never_raises(clock):
    ready, seen = calls([], [], [], [], [], [])
    assert wait_until(ready, timeout_s=1.0, poll_s=0.25) == []
    # at 0, 0.25, 0.5, 0.75 and once more at the deadline (1.0): what came by then counts
    assert len(seen) == 5 and clock.sleeps == [0.25] * 4 and clock.now == 1001.0


def test_wait_until_asks_once_even_with_no_time_at_all(clock):
    ready, seen = calls(0)
    assert wait_until(ready, timeout_s=0, poll_s=1) == 0 and len(seen) == 1 and clock.sleeps == []
    ready, seen = calls(7)
    assert wait_until(ready, timeout_s=0, poll_s=1) == 7


def test_ready_raising_gives_up_at_once(clock):
    def ready():
        raise RuntimeError("the process stopped")

    with pytest.raises(RuntimeError, match="the process stopped"):
        wait_until(ready, timeout_s=60)
    assert clock.sleeps == []


def test_without_a_deadline_it_waits_as_long_as_it_takes(clock):
    """timeout_s=math.inf: a wait something else ends (a Ray job, ended by its run's own deadlines)."""
    ready, seen = calls(*[None] * 10_000, "ended")
    assert wait_until(ready, timeout_s=math.inf, poll_s=3600) == "ended" and len(seen) == 10_001


def test_wait_for_is_the_same_loop_raising_at_the_deadline_with_its_one_line(clock):
    hinted = []

    def hint():
        hinted.append(clock.now)
        return "1 joined"

    ready, seen = calls(False)
    with pytest.raises(TimedOut) as timed_out:
        wait_for(ready, timeout_s=1.0, what="3 nodes", key="runtime.startup_timeout_s", poll_s=0.25, hint=hint)
    said = "gave up waiting for 3 nodes after 1 s (runtime.startup_timeout_s sets how long): 1 joined"
    assert str(timed_out.value) == said
    assert len(seen) == 5 and clock.sleeps == [0.25] * 4 and hinted == [1001.0]  # the hint read once, at the end
    with pytest.raises(TimedOut, match=r"^gave up waiting for x after 0.5 s \(k sets how long\)$"):
        wait_for(lambda: 0, timeout_s=0.5, what="x", key="k")
    ready, seen = calls(None, None, "ready")
    assert wait_for(ready, timeout_s=60, what="x", key="k", hint=hint) == "ready" and len(hinted) == 1


def test_a_round_with_missing_replies_returns_at_its_deadline_with_none_for_them(clock, monkeypatch):
    """Participants.exchange: replies pulled every POLL_S, the online nodes asked every ONLINE_CHECK_S; at the
    deadline the missing replies are None (recorded as client failures), not an exception."""
    from flwr.app import Message, MessageType, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    import fedsim.server.participation
    from fedsim.server.participation import Participants

    class Grid:  # node 22 answers on the third pull; node 11 stays online and never answers
        def __init__(self) -> None:
            self.pulls, self.checks, self.sent = 0, 0, []

        def push_messages(self, messages):
            for i, message in enumerate(messages):
                message.metadata.__dict__["_message_id"] = f"m{i}"
            self.sent = list(messages)
            return [m.metadata.message_id for m in messages]

        def pull_messages(self, ids):
            self.pulls += 1
            if self.pulls != 3:
                return []
            return [Message(RecordDict(), reply_to=m) for m in self.sent if m.metadata.dst_node_id == 22]

        def get_node_ids(self):
            self.checks += 1
            return [11, 22]

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    monkeypatch.setattr(fedsim.server.participation, "time", clock)
    monkeypatch.setattr(fedsim.server.participation, "POLL_S", 0.5)
    monkeypatch.setattr(fedsim.server.participation, "ONLINE_CHECK_S", 2.0)
    grid = Grid()
    messages = [Message(RecordDict(), dst_node_id=0, message_type=MessageType.TRAIN) for _ in range(2)]
    replies = Participants({0: 11, 1: 22}, seed=0).exchange(grid, messages, [0, 1], timeout=5.0)
    assert replies[0] is None and not replies[1].has_error() and list(replies) == [0, 1]
    assert grid.pulls == 11 and set(clock.sleeps) == {0.5} and clock.now == 1005.0  # 0, 0.5, ... and at 5 s
    assert grid.checks == 2  # at 2.5 s (the first pull past 2 s) and at the deadline (past 4.5 s)


def test_a_message_whose_node_went_offline_is_sent_again_once_it_is_back_and_its_reply_marked(
    clock, monkeypatch, task_identity
):
    """Participants.exchange: the SuperLink answers for node 11 that it missed its heartbeats; node 11 is offline,
    then back (its SuperNode started again): the same content goes to it again, and its reply says so. Node 22,
    offline for good, fails at the deadline."""
    from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
    from flwr.common.constant import ErrorCode

    import fedsim.server.participation
    from fedsim.messages.retries import take_retries
    from fedsim.server.participation import RESENT, Participants

    class Grid:
        def __init__(self) -> None:
            self.pushed: list[Message] = []
            self.pulls = 0

        def push_messages(self, messages):
            for message in messages:
                message.metadata.__dict__["_message_id"] = f"m{len(self.pushed)}"
                self.pushed.append(message)
            return [m.metadata.message_id for m in messages]

        def pull_messages(self, ids):
            self.pulls += 1
            if self.pulls == 2:  # the SuperLink answers for both lost nodes
                lost = self.pushed[:2]
                return [Message(Error(ErrorCode.NODE_UNAVAILABLE, "missed heartbeats"), reply_to=m) for m in lost]
            return [Message(RecordDict(), reply_to=m) for m in self.pushed[2:] if m.metadata.message_id in ids]

        def get_node_ids(self):
            return [22] if clock.now < 1002.0 else [11]  # node 11 back at 2 s, node 22 never

    monkeypatch.setattr(fedsim.server.participation, "time", clock)
    monkeypatch.setattr(fedsim.server.participation, "POLL_S", 0.5)
    grid = Grid()
    content = RecordDict({"config": ConfigRecord({"server-round": 3})})
    messages = [Message(content, dst_node_id=0, message_type=MessageType.TRAIN) for _ in range(2)]
    replies = Participants({0: 11, 1: 22}, seed=0).exchange(grid, messages, [0, 1], timeout=10.0)
    assert [m.metadata.dst_node_id for m in grid.pushed] == [11, 22, 11]  # node 11's message sent again
    assert grid.pushed[2].content is grid.pushed[0].content
    assert not replies[0].has_error() and take_retries(replies[0]).count == 1
    assert take_retries(Message(RecordDict(), reply_to=grid.pushed[2])).count == 0
    assert replies[1].has_error() and "is offline: it missed its heartbeats" in replies[1].error.reason
    assert clock.now == 1010.0  # node 22 awaited to the deadline
    assert RESENT.startswith("its node missed its heartbeats")


def test_the_federations_nodes_are_awaited_until_the_deadline_then_refused_in_one_line(clock, monkeypatch):
    """Participants.discover: too few nodes registered by the deadline goes on to the refusal, naming the key."""
    import fedsim.server.participation
    from fedsim.server.participation import Participants
    from fedsim.system.errors import ConfigError

    class Grid:  # one node registers, never the second
        lists = 0

        def get_node_ids(self):
            self.lists += 1
            return [11]

        def send_and_receive(self, messages, timeout):
            return []

    monkeypatch.setattr(fedsim.server.participation, "time", clock)
    grid = Grid()
    with pytest.raises(ConfigError, match=r"^num_clients: 2, but after 1.025 s \(runtime.startup_timeout_s\) the "):
        Participants.discover(grid, 2, seed=0, timeout=1.025)
    assert grid.lists == 22 and set(clock.sleeps) == {0.05}  # at 0, 0.05, ... 1.0, and past the deadline


def test_a_stopped_process_is_awaited_until_its_grace_then_killed(clock, monkeypatch):
    """Processes.stop: SIGTERM, its group awaited `grace_s`, then SIGKILL and 5 s more; no wait once it is gone."""
    import signal

    import fedsim.system.processes as processes
    from fedsim.system.processes import Child, Processes

    class Popen:
        pid, returncode = 4242, None

        def poll(self):
            return self.returncode

    sent: list[int] = []
    monkeypatch.setattr(processes, "descendants", lambda pid: [])
    monkeypatch.setattr(processes.os, "killpg", lambda pid, sig: sent.append(sig))
    monkeypatch.setattr(Processes, "_running", staticmethod(lambda child, tree: signal.SIGKILL not in sent))
    Processes().stop(Child("stubborn", Popen(), log=None), grace_s=3.05)
    assert sent == [signal.SIGTERM, signal.SIGKILL] and clock.sleeps == [0.1] * 31

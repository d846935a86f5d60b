"""fedsim's SuperNode (fedsim.runtimes.supernode): Flower's SuperNode still waits, pulls and heartbeats through
the names fedsim patches (docs/reference/patches.md), and starts no SuperExec of its own under --isolation process."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from helpers.patching import Stop, kept_as_is, recording, supernode_loop

from fedsim.runtimes import supernode
from fedsim.runtimes.superexec import IDLE_S
from fedsim.runtimes.supernode import LOCAL_S


@pytest.fixture
def supernode_main(monkeypatch, flower_pulls_kept):
    """fedsim.runtimes.supernode.main() with `body` run where it starts Flower's SuperNode: `body` runs with what
    main() installed in place; after the test, Flower's modules are as they were."""
    from flwr.supernode import start_client_internal

    kept_as_is(monkeypatch, start_client_internal, "time")
    monkeypatch.setattr(sys, "argv", ["fedsim-test"])

    def run(body):
        monkeypatch.setattr(supernode, "flower_supernode", body)
        supernode.main()

    return run


def test_the_supernode_idles_through_fedsims_time_and_starts_no_superexec_of_its_own(supernode_main, monkeypatch):
    """Patch `start_client_internal.time` (fedsim.runtimes.supernode.main). Guards Flower's
    `flwr.supernode.start_client_internal.start_client_internal`: after a poll that brought no message it waits
    with its module's `time.sleep` (fedsim's ShortSleeps: IDLE_S, not 3 s). Also the reliance that replaced a
    patch of its `subprocess`: with `--isolation process`, as the federation starts it, it starts no SuperExec
    (the federation starts fedsim's beside it)."""
    from flwr.supernode import start_client_internal as flower

    started, slept = [], []
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kwargs: started.append(command))

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        raise Stop  # the loop's first idle wait: enough

    monkeypatch.setattr(time, "sleep", sleep)
    with pytest.raises(Stop):
        supernode_main(supernode_loop(flower, monkeypatch, "process"))
    assert started == []
    assert slept == [IDLE_S]


def test_the_supernode_waits_for_its_clientapps_reply_through_fedsims_time(supernode_main, monkeypatch):
    """Patch `start_client_internal.time` (fedsim.runtimes.supernode.main). Guards Flower's
    `flwr.supernode.start_client_internal._push_messages`: while no reply is stored, and while a reply's part is not
    yet in the object store, it waits with its module's `time.sleep` (fedsim's ShortSleeps: LOCAL_S, not 0.5 s)."""
    from flwr.proto.message_pb2 import ObjectTree
    from flwr.supernode import start_client_internal as flower

    slept, pushed = [], []
    monkeypatch.setattr(time, "sleep", slept.append)
    reply = SimpleNamespace(
        metadata=SimpleNamespace(group_id="", run_id=1, message_type="train", message_id="r", reply_to_message_id="q")
    )
    stored = iter([[], [reply]])  # no reply at the first look, one at the second
    state = SimpleNamespace(
        get_messages_legacy=lambda is_reply: next(stored),
        get_message_processing_duration=lambda message_id: 0.0,
        delete_messages=lambda message_ids: None,
    )
    contents = iter([b"", b"payload"])  # the reply's part: not there yet, then there
    store = SimpleNamespace(
        get_object_tree=lambda message_id: ObjectTree(object_id="r"),
        get=lambda object_id: next(contents),
        delete=lambda object_id: None,
    )

    def body() -> None:
        flower._push_messages(
            state=state,
            object_store=store,
            send=lambda message, tree, runtime: ({"r"}, "session"),
            push_object=lambda run_id, session, object_id, content: pushed.append((object_id, content)),
        )

    supernode_main(body)
    assert pushed == [("r", b"payload")]
    assert slept == [LOCAL_S, LOCAL_S]


def test_the_supernode_pulls_a_messages_parts_with_fedsims_backoff(supernode_main, monkeypatch):
    """Patch `start_client_internal.pull_objects` (fedsim.runtimes.superexec.short_pulls, from the SuperNode's
    main). Guards Flower's `flwr.supernode.start_client_internal._pull_and_store_message`: it pulls a message's
    parts from the SuperLink with its module's `pull_objects`, which then takes fedsim's backoff."""
    from flwr.proto.message_pb2 import ObjectTree
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal as flower

    pulls, confirmed, stored = [], [], {}
    monkeypatch.setattr(
        flower, "pull_objects", recording(inflatable_utils.pull_objects, pulls, lambda *a, **k: {"part": b"bytes"})
    )
    message = SimpleNamespace(metadata=SimpleNamespace(group_id="", run_id=5, message_type="train", message_id="m"))
    state = SimpleNamespace(
        get_run=lambda run_id: SimpleNamespace(primary_task_type="", fab_hash="h"),  # a run the node knows
        create_task=lambda **kwargs: 1,
        store_message=lambda message: None,
    )
    store = SimpleNamespace(preregister=lambda run_id, tree: ["part"], put=stored.__setitem__)
    got = []

    def body() -> None:
        got.append(
            flower._pull_and_store_message(
                state=state,
                object_store=store,
                node_config={},
                receive=lambda: (message, ObjectTree(object_id="m")),
                get_run=None,
                get_fab=None,
                pull_object=None,
                confirm_message_received=lambda run_id, message_id: confirmed.append(message_id),
                trusted_entities=None,
            )
        )

    supernode_main(body)
    assert got == [5] and confirmed == ["m"] and stored == {"part": b"bytes"}
    assert [(p["initial_backoff"], p["backoff_cap"]) for p in pulls] == [(IDLE_S, IDLE_S)]


def test_the_supernode_sends_its_heartbeats_at_the_interval_fedsim_sets(monkeypatch):
    """Patch `HEARTBEAT_DEFAULT_INTERVAL` of `flwr.supernode.fleet_http_connection` and `flwr.supercore.heartbeat`
    (fedsim.runtimes.supernode.main). Guards Flower's SuperNode: it tells the SuperLink its interval with the first
    module's global when it activates and with each heartbeat (reads the source: that needs a SuperLink), and its
    `HeartbeatSender` waits between heartbeats by the second's (run here), so the SuperLink counts a dead node
    offline after two of fedsim's intervals, and a live one that sends at that pace never."""
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_MIN_INTERVAL
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    tree = ast.parse(inspect.getsource(fleet_http_connection))
    uses = [node for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id == "HEARTBEAT_DEFAULT_INTERVAL"]
    assert len(uses) >= 2 and all(isinstance(node.ctx, ast.Load) for node in uses)  # activation, heartbeats
    assert "HEARTBEAT_DEFAULT_INTERVAL" in fleet_http_connection.__dict__
    assert HEARTBEAT_MIN_INTERVAL < HEARTBEAT_DEFAULT_INTERVAL
    waits: list[float] = []
    monkeypatch.setattr(heartbeat, "HEARTBEAT_DEFAULT_INTERVAL", HEARTBEAT_MIN_INTERVAL)
    sender = heartbeat.HeartbeatSender(lambda: True)

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return True

    monkeypatch.setattr(sender, "_stop_event", SimpleNamespace(wait=wait, is_set=lambda: bool(waits)))
    sender._run()  # one heartbeat, one wait, then stopped
    assert len(waits) == 1 and 0 < waits[0] < HEARTBEAT_MIN_INTERVAL  # within fedsim's interval, not Flower's 30 s

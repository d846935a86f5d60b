"""A SuperNode's warm worker: the ClientApp process hands it each message and gets back what the ClientApp would
have replied, its context's state included; a message that fails there fails alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from helpers.runs import ROOT

from fedsim.client.app import make_client_app
from fedsim.client.worker import READY, WORKER, forwarded_to_worker
from fedsim.system.waits import wait_for


@pytest.fixture
def worker(tmp_path) -> Path:
    socket_path = tmp_path / "node.sock"
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fedsim.client.worker", str(socket_path)], cwd=ROOT, stdout=out, stderr=out
        )
    try:
        wait_for(
            lambda: READY in log.read_text() or process.poll() is not None,
            timeout_s=120,
            what="the worker to listen",
            key="the test",
        )
        assert process.poll() is None, log.read_text()
        yield socket_path
    finally:
        process.kill()
        process.wait()


def context(partition: int, socket_path: Path | None) -> Context:
    node_config = {"partition-id": partition, "num-partitions": 4}
    if socket_path is not None:
        node_config[WORKER] = str(socket_path)
    state = RecordDict({"kept": ConfigRecord({"n": 1})})
    return Context(run_id=1, node_id=7, node_config=node_config, state=state, run_config={})


def query() -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    message = Message(RecordDict(), dst_node_id=7, message_type=MessageType.QUERY)
    message.metadata.__dict__["_message_id"] = "q1"
    return message


def test_a_forwarded_message_gets_the_reply_the_clientapp_gives_in_process(worker):
    app = make_client_app()
    here = app(query(), context(2, None))
    forwarded_context = context(2, worker)
    there = app(query(), forwarded_context)
    assert dict(there.content["node"]) == dict(here.content["node"]) == {"partition-id": 2, "num-partitions": 4}
    assert there.metadata.reply_to_message_id == "q1"
    assert dict(forwarded_context.state["kept"]) == {"n": 1}  # the state came back


def test_a_message_that_fails_in_the_worker_fails_alone(worker):
    unknown = query()
    unknown.metadata.__dict__["_message_type"] = "no-such-type"
    with pytest.raises(RuntimeError):
        forwarded_to_worker(unknown, context(1, worker), lambda m, c: pytest.fail("answered in process"))
    reply = forwarded_to_worker(query(), context(3, worker), lambda m, c: pytest.fail("answered in process"))
    assert reply.content["node"]["partition-id"] == 3  # the worker went on

"""A SuperNode's warm worker: the ClientApp process hands it each message and gets back what the ClientApp would
have replied, its context's state included; a message that fails there fails alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity
from helpers.runs import ROOT

from fedsim.client.app import make_client_app
from fedsim.client.wire import READY, WORKER, decoded, encoded, forwarded_to_worker
from fedsim.system.waits import wait_for


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Path:
    """One worker process for the module's tests (each message it serves stands alone)."""
    folder = tmp_path_factory.mktemp("worker")
    socket_path = folder / "node.sock"
    log = folder / "worker.log"
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


@pytest.mark.slow
def test_a_forwarded_message_gets_the_reply_the_clientapp_gives_in_process(worker):
    app = make_client_app()
    here = app(query(), context(2, None))
    forwarded_context = context(2, worker)
    there = app(query(), forwarded_context)
    assert dict(there.content["node"]) == dict(here.content["node"]) == {"partition-id": 2, "num-partitions": 4}
    assert there.metadata.reply_to_message_id == "q1"
    assert dict(forwarded_context.state["kept"]) == {"n": 1}  # the state came back


@pytest.mark.slow
def test_a_message_that_fails_in_the_worker_fails_alone(worker):
    unknown = query()
    unknown.metadata.__dict__["_message_type"] = "no-such-type"
    with pytest.raises(RuntimeError):
        forwarded_to_worker(unknown, context(1, worker), lambda m, c: pytest.fail("answered in process"))
    reply = forwarded_to_worker(query(), context(3, worker), lambda m, c: pytest.fail("answered in process"))
    assert reply.content["node"]["partition-id"] == 3  # the worker went on


def test_a_message_crosses_to_the_worker_with_its_arrays_as_their_own_bytes():
    """The frames hold each array's bytes as the message held them (no protobuf copy), and the message and
    context rebuilt from them are the ones sent: metadata, every record, every array's bytes, the state."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    arrays = ArrayRecord({"w": Array(np.arange(12, dtype=np.float32).reshape(3, 4)), "ids": Array(np.arange(5))})
    content = RecordDict(
        {"arrays": arrays, "config": ConfigRecord({"lr": 0.1}), "metrics": MetricRecord({"n": 3}), "no": ArrayRecord()}
    )
    message = Message(content, dst_node_id=7, message_type=MessageType.TRAIN)
    sent = context(1, None)
    frames = encoded(message, sent)
    assert frames[2] is arrays["w"].data and frames[3] is arrays["ids"].data
    got, got_context = decoded([bytes(f) for f in frames])
    assert got.metadata == message.metadata
    assert list(got.content.keys()) == ["arrays", "config", "metrics", "no"]
    for key in ("arrays", "no"):
        assert {k: (a.dtype, a.shape, a.stype, a.data) for k, a in got.content[key].items()} == {
            k: (a.dtype, a.shape, a.stype, a.data) for k, a in content[key].items()
        }
    assert dict(got.content["config"]) == {"lr": 0.1} and dict(got.content["metrics"]) == {"n": 3}
    assert np.array_equal(got.content["arrays"]["w"].numpy(), arrays["w"].numpy())
    assert got_context.node_config == sent.node_config and dict(got_context.state["kept"]) == {"n": 1}
    assert message.content["arrays"]["w"].data == arrays["w"].data  # the message sent is left whole


def test_an_error_reply_crosses_to_the_worker_without_content():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason="boom"), reply_to=query())
    got, _ = decoded(encoded(reply, context(0, None)))
    assert got.has_error() and not got.has_content()
    assert (got.error.code, got.error.reason) == (ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "boom")
    assert got.metadata == reply.metadata

"""A SuperNode's warm worker: one long-lived process that runs the ClientApp for every message of its node.

Flower 1.42 starts a new ClientApp process for every message (there is no long-lived ClientApp:
flwrlabs/flower#3670), so each message of a localhost deployment paid for importing torch, reading the
run's config, loading the node's data and building the model, three processes at once on a 2-core
machine. fedsim's local federation (fedsim.runtimes.federation) starts a worker beside each SuperNode and
names its socket in the node's config (`worker`); the ClientApp process then imports no torch and hands
the message and its context to the worker (`forwarded_to_worker`, the ClientApp's outermost mod), which
runs fedsim's whole ClientApp on them, keeping torch, the data and the model alive across messages, and
sends back the reply and the context's state. A SuperNode started without a worker runs the ClientApp in
its own process, as before.

    python -m fedsim.client.worker SOCKET
"""

from __future__ import annotations

import importlib
import os
import socket
import struct
import sys
from collections.abc import Iterator

from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.app.message.message import make_message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage

WORKER = "worker"  # the node-config key naming the worker's socket


READY = "warm worker ready"  # what a worker prints once it listens


OK = b"ok"


def send(connection: socket.socket, frames: list[bytes]) -> None:
    """The frames' count and lengths, then the frames: Flower's own protobuf encoding and arrays' bytes, never
    pickle. Each frame is sent as it is, not joined into one buffer first."""
    connection.sendall(struct.pack(f"!{len(frames) + 1}Q", len(frames), *map(len, frames)))
    for frame in frames:
        connection.sendall(frame)


def receive(connection: socket.socket) -> list[bytes]:
    (count,) = struct.unpack("!Q", _exactly(connection, 8))
    sizes = struct.unpack(f"!{count}Q", _exactly(connection, 8 * count))
    return [_exactly(connection, size) for size in sizes]


def encoded(message: Message, context: Context) -> list[bytes]:
    """The message and its context as frames: Flower's protobuf encoding of each, the message's arrays with
    no data, then each array's data (Array.data as it is). Protobuf copies an array's bytes at every level
    it nests them in, which made encoding a model's message cost more than sending it."""
    arrays = list(_arrays(message))
    hollow = message
    if arrays:
        content = RecordDict(
            {
                key: ArrayRecord({k: Array(a.dtype, a.shape, a.stype, b"") for k, a in record.items()})
                if isinstance(record, ArrayRecord)
                else record
                for key, record in message.content.items()
            }
        )
        hollow = make_message(metadata=message.metadata, content=content)
    protos = [message_to_proto(hollow).SerializeToString(), context_to_proto(context).SerializeToString()]
    return protos + [array.data for _, _, array in arrays]


def decoded(frames: list[bytes]) -> tuple[Message, Context]:
    """What `encoded` made of a message and its context."""
    message = message_from_proto(ProtoMessage.FromString(frames[0]))
    data = iter(frames[2:])
    for record, key, array in list(_arrays(message)):
        record[key] = Array(array.dtype, array.shape, array.stype, next(data))
    return message, context_from_proto(ProtoContext.FromString(frames[1]))


def _arrays(message: Message) -> Iterator[tuple[ArrayRecord, str, Array]]:
    """Each array of the message's content (none in an error's), in the order protobuf keeps them."""
    if message.has_content():
        for record in message.content.values():
            if isinstance(record, ArrayRecord):
                yield from ((record, key, array) for key, array in record.items())


def _exactly(connection: socket.socket, size: int) -> bytes:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = connection.recv_into(view[got:], size - got)
        if n == 0:
            raise ConnectionError("the warm worker closed the connection")
        got += n
    return bytes(buffer)


def forwarded_to_worker(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A Flower mod: on a node with a warm worker, the message is answered there, not in this process."""
    path = context.node_config.get(WORKER)
    if not path:
        return call_next(message, context)
    node_config = {k: v for k, v in context.node_config.items() if k != WORKER}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(str(path))
        forwarded = Context(context.run_id, context.node_id, node_config, context.state, context.run_config)
        send(connection, encoded(message, forwarded))
        status, *answer = receive(connection)
    if status != OK:
        raise RuntimeError(answer[0].decode())
    reply, answered = decoded(answer)
    context.state = answered.state
    return reply


def serve(path: str) -> None:
    """Answer messages on the Unix socket `path`, one at a time, until the process is stopped.

    Once it listens, and before its first message, it imports what training needs (torch, the client, and
    the torch._dynamo that torch.optim imports when it builds its first optimizer): the federation goes on
    starting meanwhile, and a message that comes sooner waits in the socket's backlog."""
    from fedsim.client.app import make_client_app
    from fedsim.client.mods import error_line

    app = make_client_app()
    if os.path.exists(path):
        os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen()
        print(f"{READY} on {path}", flush=True)
        importlib.import_module("fedsim.client.client")
        importlib.import_module("torch._dynamo")
        while True:
            connection, _ = server.accept()
            with connection:
                frames = receive(connection)
                try:
                    message, context = decoded(frames)
                    send(connection, [OK, *encoded(app(message, context), context)])
                except Exception as exc:  # as Flower would: the message's error, the worker goes on
                    send(connection, [b"error", error_line(exc).encode()])


if __name__ == "__main__":
    serve(sys.argv[1])

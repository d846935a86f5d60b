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

import os
import socket
import struct
import sys

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.serde import context_from_proto, context_to_proto, message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Context as ProtoContext
from flwr.proto.message_pb2 import Message as ProtoMessage

WORKER = "worker"  # the node-config key naming the worker's socket


READY = "warm worker ready"  # what a worker prints once it listens


OK = b"ok"


def send(connection: socket.socket, *frames: bytes) -> None:
    """Length-prefixed frames: what crosses the socket is Flower's own protobuf encoding, never pickle."""
    connection.sendall(b"".join(struct.pack("!Q", len(frame)) + frame for frame in frames))


def receive(connection: socket.socket, count: int) -> list[bytes]:
    return [_exactly(connection, struct.unpack("!Q", _exactly(connection, 8))[0]) for _ in range(count)]


def encoded(message: Message, context: Context) -> tuple[bytes, bytes]:
    return message_to_proto(message).SerializeToString(), context_to_proto(context).SerializeToString()


def decoded(message: bytes, context: bytes) -> tuple[Message, Context]:
    return message_from_proto(ProtoMessage.FromString(message)), context_from_proto(ProtoContext.FromString(context))


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
        send(connection, *encoded(message, forwarded))
        status, *answer = receive(connection, 3)
    if status != OK:
        raise RuntimeError(answer[0].decode())
    reply, answered = decoded(*answer)
    context.state = answered.state
    return reply


def serve(path: str) -> None:
    """Answer messages on the Unix socket `path`, one at a time, until the process is stopped."""
    from fedsim.client.app import make_client_app
    from fedsim.client.mods import error_line

    app = make_client_app()
    if os.path.exists(path):
        os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen()
        print(f"{READY} on {path}", flush=True)
        while True:
            connection, _ = server.accept()
            with connection:
                frames = receive(connection, 2)
                try:
                    message, context = decoded(*frames)
                    send(connection, OK, *encoded(app(message, context), context))
                except Exception as exc:  # as Flower would: the message's error, the worker goes on
                    send(connection, b"error", error_line(exc).encode(), b"")


if __name__ == "__main__":
    serve(sys.argv[1])

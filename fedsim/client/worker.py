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
import pickle
import socket
import struct
import sys
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

WORKER = "worker"  # the node-config key naming the worker's socket


READY = "warm worker ready"  # what a worker prints once it listens


def send(connection: socket.socket, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    connection.sendall(struct.pack("!Q", len(data)) + data)


def receive(connection: socket.socket) -> Any:
    (size,) = struct.unpack("!Q", _exactly(connection, 8))
    return pickle.loads(_exactly(connection, size))


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
        send(
            connection,
            (message, Context(context.run_id, context.node_id, node_config, context.state, context.run_config)),
        )
        reply, state, error = receive(connection)
    if error is not None:
        raise RuntimeError(error)
    context.state = state
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
                message, context = receive(connection)
                try:
                    send(connection, (app(message, context), context.state, None))
                except Exception as exc:  # as Flower would: the message's error, the worker goes on
                    send(connection, (None, None, error_line(exc)))


if __name__ == "__main__":
    serve(sys.argv[1])

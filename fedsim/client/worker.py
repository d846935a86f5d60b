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

import contextlib
import importlib
import os
import socket
import sys

from fedsim.client.app import make_client_app
from fedsim.client.wire import OK, READY, decoded, encoded, receive, send
from fedsim.system.errors import error_line


def serve(path: str) -> None:
    """Answer messages on the Unix socket `path`, one at a time, until the process is stopped.

    Once it listens, and before its first message, it imports what training needs (torch, the client, and
    the torch._dynamo that torch.optim imports when it builds its first optimizer): the federation goes on
    starting meanwhile, and a message that comes sooner waits in the socket's backlog."""
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
            with connection, contextlib.suppress(OSError):  # a ClientApp gone (its SuperNode died): only its own
                frames = receive(connection)
                try:
                    message, context = decoded(frames)
                    reply = [OK, *encoded(app(message, context), context)]
                except Exception as exc:  # as Flower would: the message's error, the worker goes on
                    reply = [b"error", error_line(exc).encode()]
                send(connection, reply)


if __name__ == "__main__":
    serve(sys.argv[1])

"""The wire between a ClientApp process and its node's warm worker (fedsim.client.worker): the socket a node's
config names (`worker`), the line a worker prints once it listens, the frames a message and its context cross
in, and the ClientApp's outermost mod that forwards every message there. fedsim's local federation
(fedsim.runtimes.federation) reads the same two names to start and wait for the workers.
"""

from __future__ import annotations

import socket
import struct
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

"""A message for one partition, sent to a pooled simulation node: the server names the partition in the message
(`addressed`), and the ClientApp's mod serves it as if the node were that partition's own
(`partition_from_message`). With one node per partition no message carries it."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable

PARTITION = "partition"  # a message's record naming the partition it is for


def addressed(content: RecordDict, partition_id: int, num_partitions: int) -> RecordDict:
    """`content` with the record naming the partition it is for."""
    return RecordDict(
        {**content, PARTITION: ConfigRecord({"partition-id": int(partition_id), "num-partitions": int(num_partitions)})}
    )


def partition_from_message(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A Flower mod: a pooled simulation node serves the partition its message names (the `partition` record),
    as if it were that partition's own node. The record is taken off the message: Flower's DP clipping mods
    accept a single config record."""
    if PARTITION not in message.content:
        return call_next(message, context)
    node_config = {**context.node_config, **{k: int(v) for k, v in message.content[PARTITION].items()}}
    del message.content[PARTITION]
    return call_next(
        message,
        Context(
            run_id=context.run_id,
            node_id=context.node_id,
            node_config=node_config,
            state=context.state,
            run_config=context.run_config,
        ),
    )

"""The ClientApp's mods, outermost first: the run config a simulation hands in, a carried cohort taken
apart, sparse replies, the partition a pooled node serves (and, in fedsim.privacy.dp, the privacy mod).
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode

from fedsim.config.compose import config_from
from fedsim.model.carried import COHORT, pack, split
from fedsim.model.records import PARTITION
from fedsim.model.sparse import SPARSE, sparsify


def with_run_config(run_config: Mapping[str, Any]):
    """A Flower mod that shows the handlers `run_config` as the context's run config.

    The handlers' context keeps its node config and state; the stored context is left as Flower
    made it (Flower refuses a changed run config).
    """

    def mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        return call_next(
            message,
            Context(
                run_id=context.run_id,
                node_id=context.node_id,
                node_config=context.node_config,
                state=context.state,
                run_config=dict(run_config),
            ),
        )

    return mod


def error_line(exc: BaseException) -> str:
    """An exception as its traceback's last line, `Type: message` (a message's first line only)."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[0]


def replies_errors(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """A handler whose exception becomes an error reply with its last line: the server records it per
    client (clients.csv) and prints each distinct error once, instead of a traceback per client and round."""

    @functools.wraps(handler)
    def guarded(message: Message, context: Context) -> Message:
        try:
            return handler(message, context)
        except Exception as exc:
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=error_line(exc)), reply_to=message)

    return guarded


def carried_cohort(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A Flower mod: a message carrying several partitions (fedsim.model.carried) runs through the rest of
    the ClientApp once per partition, one after another, each exactly as if it had come alone; the node
    replies once with every answer. A client whose call raises gets its own error; the others still count."""
    if COHORT not in message.content:
        return call_next(message, context)
    guarded = replies_errors(call_next)
    return Message(pack([guarded(single, context) for _, single in split(message)]), reply_to=message)


def sparse_replies(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A Flower mod: with `sparse_updates`, a training reply sends the rows it changed of each large tensor
    (fedsim.model.sparse) instead of the whole tensor. It wraps the privacy mod: what it sparsifies is the
    update as clipped."""
    reply = call_next(message, context)
    if (
        message.metadata.message_type != MessageType.TRAIN
        or reply.has_error()
        or SPARSE in reply.content  # sparse already, from the rows the client trained (fedsim.client.app)
        or not config_from(context.run_config).get("sparse_updates", False)
    ):
        return reply
    arrays, ids = sparsify(message.content["arrays"], reply.content["arrays"])
    if not len(ids):
        return reply
    return Message(RecordDict({**reply.content, "arrays": arrays, SPARSE: ids}), reply_to=message)


def partition_from_message(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A Flower mod: a pooled simulation node serves the partition its message names (the `partition`
    record), as if it were that partition's own node. The record is taken off the message: Flower's DP
    clipping mods accept a single config record."""
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

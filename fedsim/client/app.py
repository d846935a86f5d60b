"""fedsim's Flower ClientApp: `train` and `evaluate` handlers around `client_fn(context)`'s IMDBClient.

`app` is what `flwr run` loads (pyproject.toml's [tool.flwr.app.components]); `python main.py`
builds the same handlers with `make_client_app`, handing in the run config that Flower's
`run_simulation` cannot.
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common.constant import ErrorCode

from fedsim.client.client import ClientFn, client_fn, settings_for
from fedsim.model.records import PARTITION, record_views, to_record
from fedsim.model.transport import encode
from fedsim.privacy.dp import privacy_mod
from fedsim.runtimes.cluster import node_name


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


def make_client_app(
    client_fn: ClientFn = client_fn, run_config: Mapping[str, Any] | None = None, mods: Sequence[Mod] = ()
) -> ClientApp:
    """The ClientApp: which partition a node serves (query), local training, local evaluation.

    `mods` run first (fedsim.shipping's delivery of the data to a cluster's nodes); the privacy mod runs
    last, nearest the handlers, so it clips what the client trained."""
    app = ClientApp(
        mods=[
            *mods,
            *([with_run_config(run_config)] if run_config is not None else []),
            partition_from_message,
            privacy_mod,
        ]
    )

    @app.query()
    def describe(message: Message, context: Context) -> Message:
        """The partition this node serves, so the server can choose clients by partition."""
        node = ConfigRecord({key: int(context.node_config[key]) for key in ("partition-id", "num-partitions")})
        return Message(RecordDict({"node": node}), reply_to=message)

    @app.train()
    @replies_errors
    def train(message: Message, context: Context) -> Message:
        arrays = message.content["arrays"]
        weights, num_examples, metrics = client_fn(context).fit(record_views(arrays), message.content["config"])
        weights = encode(weights, settings_for(context.run_config).transport)
        return Message(
            RecordDict(
                {
                    "arrays": to_record(list(arrays.keys()), weights),
                    "metrics": MetricRecord({"num-examples": num_examples, **metrics}),
                    "client": ConfigRecord({"node": node_name()}),
                }
            ),
            reply_to=message,
        )

    @app.evaluate()
    @replies_errors
    def evaluate(message: Message, context: Context) -> Message:
        loss, num_examples, metrics = client_fn(context).evaluate(
            record_views(message.content["arrays"]), message.content["config"]
        )
        return Message(
            RecordDict({"metrics": MetricRecord({"num-examples": num_examples, "loss": loss, **metrics})}),
            reply_to=message,
        )

    return app


app = make_client_app()

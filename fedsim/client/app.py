"""fedsim's Flower ClientApp: `train` and `evaluate` handlers around `client_fn(context)`'s IMDBClient.

`app` is what `flwr run` loads (pyproject.toml's [tool.flwr.app.components]); `python main.py`
builds the same handlers with `make_client_app`, handing in the run config that Flower's
`run_simulation` cannot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod

from fedsim.client.wire import forwarded_to_worker
from fedsim.messages.addressed import partition_from_message
from fedsim.messages.carried import carried_cohort
from fedsim.messages.error_replies import replies_errors
from fedsim.messages.records import record_views, to_record
from fedsim.messages.sparse import SPARSE, sparse_replies, sparse_update
from fedsim.messages.transport import encode
from fedsim.privacy.dp import privacy_mod
from fedsim.system.processes import node_name

if TYPE_CHECKING:
    from fedsim.client.client import ClientFn


def with_run_config(run_config: Mapping[str, Any]) -> Mod:
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


def make_client_app(
    client_fn: ClientFn | None = None, run_config: Mapping[str, Any] | None = None, mods: Sequence[Mod] = ()
) -> ClientApp:
    """The ClientApp: which partition a node serves (query), local training, local evaluation.

    `client_fn` defaults to fedsim.client.client's, imported when a message first needs it: a deployment's
    ClientApp process whose node has a warm worker forwards every message (fedsim.client.wire, the
    outermost mod) and never imports torch. `mods` run next (fedsim.runtimes.shipping's delivery of the data
    to a cluster's nodes); a carried cohort is taken apart before the rest (fedsim.messages.carried),
    replies are sparsified after the privacy mod has clipped them, and the privacy mod runs last, nearest
    the handlers, so it clips what the client trained.
    Where nothing clips, a bow client's reply is made sparse by `train` itself, from the rows it trained."""
    app = ClientApp(
        mods=[
            forwarded_to_worker,
            *mods,
            *([with_run_config(run_config)] if run_config is not None else []),
            carried_cohort,
            sparse_replies,
            partition_from_message,
            privacy_mod,
        ]
    )

    def client_of(context: Context):
        if client_fn is not None:
            return client_fn(context)
        from fedsim.client.client import client_fn as default  # torch: only where a message is answered here

        return default(context)

    @app.query()
    def describe(message: Message, context: Context) -> Message:
        """The partition this node serves, so the server can choose clients by partition."""
        node = ConfigRecord({key: int(context.node_config[key]) for key in ("partition-id", "num-partitions")})
        return Message(RecordDict({"node": node}), reply_to=message)

    @app.train()
    @replies_errors
    def train(message: Message, context: Context) -> Message:
        from fedsim.client.client import settings_for  # torch: only where a message is answered here

        arrays, settings = message.content["arrays"], settings_for(context.run_config)
        names = list(arrays.keys())
        trained, num_examples, metrics = client_of(context).local_update(
            record_views(arrays), message.content["config"]
        )
        content = {
            "metrics": MetricRecord({"num-examples": num_examples, **metrics}),
            "client": ConfigRecord({"node": node_name()}),
        }
        if settings.sparse_rows and trained.rows is not None:  # the sparse reply, from the trained rows alone
            sparse, ids = sparse_update(names, arrays, trained)
            return Message(
                RecordDict({"arrays": sparse, **content, **({SPARSE: ids} if len(ids) else {})}), reply_to=message
            )
        weights = encode(trained.dense(), settings.transport)
        return Message(RecordDict({"arrays": to_record(names, weights), **content}), reply_to=message)

    @app.evaluate()
    @replies_errors
    def evaluate(message: Message, context: Context) -> Message:
        loss, num_examples, metrics = client_of(context).evaluate(
            record_views(message.content["arrays"]), message.content["config"]
        )
        return Message(
            RecordDict({"metrics": MetricRecord({"num-examples": num_examples, "loss": loss, **metrics})}),
            reply_to=message,
        )

    return app


app = make_client_app()

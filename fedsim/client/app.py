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
from flwr.clientapp.typing import Mod

from fedsim.client.mods import carried_cohort, partition_from_message, replies_errors, sparse_replies, with_run_config
from fedsim.client.worker import forwarded_to_worker
from fedsim.model.records import record_views, to_record
from fedsim.model.sparse import SPARSE, sparse_update
from fedsim.privacy.dp import privacy_mod
from fedsim.runtimes.cluster import node_name

if TYPE_CHECKING:
    from fedsim.client.client import ClientFn


def make_client_app(
    client_fn: ClientFn | None = None, run_config: Mapping[str, Any] | None = None, mods: Sequence[Mod] = ()
) -> ClientApp:
    """The ClientApp: which partition a node serves (query), local training, local evaluation.

    `client_fn` defaults to fedsim.client.client's, imported when a message first needs it: a deployment's
    ClientApp process whose node has a warm worker forwards every message (fedsim.client.worker, the
    outermost mod) and never imports torch. `mods` run next (fedsim.shipping's delivery of the data to a
    cluster's nodes); a carried cohort is
    taken apart before the rest (fedsim.client.mods), replies are sparsified after the privacy mod has
    clipped them, and the privacy mod runs last, nearest the handlers, so it clips what the client trained.
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
        from fedsim.client.client import client_fn as default

        return default(context)

    @app.query()
    def describe(message: Message, context: Context) -> Message:
        """The partition this node serves, so the server can choose clients by partition."""
        node = ConfigRecord({key: int(context.node_config[key]) for key in ("partition-id", "num-partitions")})
        return Message(RecordDict({"node": node}), reply_to=message)

    @app.train()
    @replies_errors
    def train(message: Message, context: Context) -> Message:
        from fedsim.client.client import settings_for
        from fedsim.model.transport import encode

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

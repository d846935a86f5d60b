"""A Flower Grid that runs a ClientApp in this process: the ServerApp's loop without Ray or a SuperLink."""

from __future__ import annotations

import random
from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from fedsim.messages.addressed import PARTITION
from fedsim.messages.carried import COHORT

CLIENT_APP_RAISED = 1  # as Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION


class LocalGrid(Grid):
    """`num_nodes` nodes with random ids (as Flower gives them), node i serving partition i.

    Every node keeps its own Context across messages; replies come back shuffled, as a real
    federation may return them. `sent` logs (message type, partition) of every client's call: the
    partitions a message carries or names (pooled nodes), else its node's; `messages` logs each
    message once.
    """

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict | None = None, seed: int = 0) -> None:
        # Flower's messages take their run and sender from the process's task identity, as the simulation sets it.
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
        self.client_app = client_app
        rng = random.Random(seed)
        self.contexts = {
            rng.getrandbits(63): Context(
                run_id=1,
                node_id=0,
                state=RecordDict(),
                run_config=dict(run_config or {}),
                node_config={"partition-id": p, "num-partitions": num_nodes},
            )
            for p in range(num_nodes)
        }
        self.rng = rng
        self.sent: list[tuple[str, int]] = []
        self.messages: list[tuple[str, int]] = []  # (message type, how many partitions it carried)
        self.replies: dict[str, Message] = {}

    def set_run(self, run) -> None:
        raise NotImplementedError

    @property
    def run(self):
        raise NotImplementedError

    def create_message(self, *args, **kwargs) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Each message answered at once, by its node's ClientApp; the replies wait for `pull_messages`."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
            context = self.contexts[message.metadata.dst_node_id]
            kind = message.metadata.message_type
            if COHORT in message.content:
                partitions = [int(p) for p in message.content[COHORT]["partition-ids"]]
            else:
                named = message.content[PARTITION] if PARTITION in message.content else context.node_config
                partitions = [int(named["partition-id"])]
            self.sent += [(kind, p) for p in partitions]
            self.messages.append((kind, len(partitions)))
            try:
                self.replies[message.metadata.message_id] = self.client_app(message, context)
            except Exception as exc:  # as Flower's simulation: a failing ClientApp becomes an error reply
                self.replies[message.metadata.message_id] = Message(
                    Error(code=CLIENT_APP_RAISED, reason=f"{type(exc).__name__}: {exc}"), reply_to=message
                )
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = [self.replies.pop(mid) for mid in message_ids if mid in self.replies]
        self.rng.shuffle(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

"""Who takes part in a round, chosen by partition from (seed, round), never from Flower's node ids.

Flower gives nodes random ids in every run, and its strategies sample node ids, so the same seed
used to pick different clients from run to run. Here the server first asks every node which
partition it serves; each round the strategy still decides how many nodes it wants (its
fraction and minimum, in Flower's own formula) and what to send them, and fedsim decides which
partitions receive those messages.
"""

from __future__ import annotations

import time
from typing import Iterable, Sequence

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsim.errors import ConfigError

TRAIN, EVALUATE = 0x7A, 0xE7  # separate random streams per purpose


def choose(seed: int, server_round: int, purpose: int, count: int, num_clients: int) -> list[int]:
    """`count` distinct partition ids for this round and purpose, in increasing order."""
    chosen = np.random.default_rng([seed, server_round, purpose]).choice(num_clients, size=count, replace=False)
    return sorted(int(c) for c in chosen)


class Participants:
    """The federation's nodes by the partition each serves, and the run's seed that picks among them."""

    def __init__(self, node_of: dict[int, int], seed: int) -> None:
        self.node_of = node_of  # partition id -> node id
        self.partition_of = {node: partition for partition, node in node_of.items()}
        self.seed = seed

    @classmethod
    def discover(cls, grid: Grid, num_clients: int, seed: int, timeout: float = 120.0) -> Participants:
        """Ask every node for its partition; refuse a federation that does not serve exactly num_clients."""
        deadline = time.monotonic() + timeout
        while len(nodes := list(grid.get_node_ids())) < num_clients and time.monotonic() < deadline:
            time.sleep(0.05)  # the simulation registers its nodes while the server starts
        replies = grid.send_and_receive(
            [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes],
            timeout=timeout)
        served = {int(r.content["node"]["partition-id"]): r.metadata.src_node_id for r in replies if not r.has_error()}
        sizes = {int(r.content["node"]["num-partitions"]) for r in replies if not r.has_error()}
        if sorted(served) != list(range(num_clients)) or sizes - {num_clients}:
            raise ConfigError("num_clients", f"{num_clients}, but the federation's {len(nodes)} nodes serve partitions "
                              f"{sorted(served)[:10]}{'...' if len(served) > 10 else ''} of {sorted(sizes)}; allowed: "
                              "as many clients as nodes, each serving one partition 0..num_clients-1")
        return cls(served, seed)

    def pick(self, server_round: int, purpose: int, count: int) -> list[int]:
        """The round's `count` partitions for this purpose, in increasing order."""
        return choose(self.seed, server_round, purpose, count, len(self.node_of)) if count else []

    def exchange(self, grid: Grid, messages: Sequence[Message], partitions: Sequence[int],
                 timeout: float) -> dict[int, Message | None]:
        """Send the strategy's messages to `partitions`: {partition: its reply (an error too), or None if
        none came}, in partition order: aggregation then sums in a fixed order, so reruns match bit for bit."""
        if not partitions:
            return {}
        replies = {self.partition_of[r.metadata.src_node_id]: r
                   for r in grid.send_and_receive(self.address(messages[:len(partitions)], partitions),
                                                  timeout=timeout)}
        return {p: replies.get(p) for p in partitions}

    def address(self, messages: Iterable[Message], partitions: Sequence[int]) -> list[Message]:
        """The strategy's messages, one each, sent to the chosen partitions' nodes instead of its own sample."""
        messages = list(messages)
        if len(messages) != len(partitions):
            raise ValueError(f"{len(messages)} messages for {len(partitions)} partitions")
        return [Message(m.content, dst_node_id=self.node_of[p], message_type=m.metadata.message_type)
                for m, p in zip(messages, partitions)]

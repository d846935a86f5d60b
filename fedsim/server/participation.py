"""Who takes part in a round, chosen by partition from (seed, round), never from Flower's node ids.

Flower gives nodes random ids in every run, and its strategies sample node ids, so the same seed
used to pick different clients from run to run. Here the server first asks every node which
partition it serves; each round the strategy still decides how many nodes it wants (its
fraction and minimum, in Flower's own formula) and what to send them, and fedsim decides which
partitions receive those messages.

A simulation may also run fewer SuperNodes than clients (`runtime.node_slots`): a pool of slots,
each message naming the partition it is for (the `partition` record, read by the ClientApp), or,
with `runtime.cohort_messages`, one message per slot and round carrying every partition the slot
serves (fedsim.messages.carried). Nothing about a client lives in its node, so the results are those of
one node per client.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Error, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedsim.messages.addressed import addressed
from fedsim.messages.carried import answers, carry, same_content
from fedsim.messages.retries import Retried, mark_retried
from fedsim.privacy.randomness import secret_seed
from fedsim.system.errors import ConfigError, RunFailed
from fedsim.system.waits import wait_until

TRAIN, EVALUATE = 0x7A, 0xE7  # separate random streams per purpose
POISSON = 0x9015  # Poisson sampling's stream, apart from the fixed-size one's


POLL_S = 0.1  # how often the server pulls replies (Flower's in-memory grid's interval; its HTTP grid waits 3 s)


ONLINE_CHECK_S = 5.0  # how often it asks which nodes are still online, while replies are missing
BACK_CHECK_S = 1.0  # how often, while a message's node is offline, whether it is back


OFFLINE = "offline: it missed its heartbeats"
RESENT = "its node missed its heartbeats (it died or lost the SuperLink); the message was sent again once it was back"


def choose(seed: int, server_round: int, purpose: int, count: int, num_clients: int) -> list[int]:
    """`count` distinct partition ids for this round and purpose, in increasing order."""
    chosen = np.random.default_rng([seed, server_round, purpose]).choice(num_clients, size=count, replace=False)
    return sorted(int(c) for c in chosen)


def choose_poisson(seed: int, server_round: int, purpose: int, rate: float, num_clients: int) -> list[int]:
    """Each partition independently with probability `rate` (Poisson sampling of clients, DP-FedAvg's model:
    McMahan et al., ICLR 2018), drawn from (seed, round, purpose); in increasing order, possibly none."""
    if not 0 < rate <= 1:
        raise ValueError(f"a sampling rate in (0, 1], got {rate}")
    draws = np.random.default_rng([seed, server_round, purpose, POISSON]).random(num_clients)
    return [int(p) for p in np.flatnonzero(draws < rate)]


@dataclass(frozen=True)
class Sampling:
    """How a round's partitions are drawn (`strategy.sampling`): `fixed`, as many as the strategy sends messages,
    without replacement (Flower's way); `poisson`, each partition with its purpose's rate (the strategy's
    fraction_train, fraction_evaluate), however many that makes, none included. `secret`: each draw seeded from
    the operating system's entropy instead of (seed, round, purpose), so that nobody can recompute who took part
    (a DP run with `privacy.noise_source=secure`, fedsim.privacy.randomness)."""

    kind: str = "fixed"
    train_rate: float = 1.0
    evaluate_rate: float = 1.0
    secret: bool = False

    @property
    def poisson(self) -> bool:
        return self.kind == "poisson"

    def rate(self, purpose: int) -> float:
        return self.train_rate if purpose == TRAIN else self.evaluate_rate


class Participants:
    """The federation's nodes, and the run's seed that picks partitions among them.

    One node per partition (`node_of`: partition -> node), or a pool of slots (`node_of`: slot ->
    node) that serve whichever partition a message names.
    """

    def __init__(
        self,
        node_of: dict[int, int],
        seed: int,
        num_clients: int | None = None,
        carried: bool = False,
        sampling: Sampling = Sampling(),
    ) -> None:
        self.node_of = node_of
        self.seed = seed
        self.num_clients = len(node_of) if num_clients is None else num_clients
        self.carried = carried
        self.sampling = sampling

    @property
    def pooled(self) -> bool:
        return len(self.node_of) < self.num_clients

    @classmethod
    def discover(
        cls,
        grid: Grid,
        num_clients: int,
        seed: int,
        slots: int | None = None,
        timeout: float = 120.0,
        carried: bool = False,
        sampling: Sampling = Sampling(),
    ) -> Participants:
        """Ask every node which partition (or slot) it serves; refuse a federation that does not serve
        exactly num_clients partitions (or `slots` slots). `carried`: a pooled node gets one message a
        round for all the partitions it serves."""
        expected = slots or num_clients
        nodes: list[int] = []

        def registered() -> bool:  # the simulation registers its nodes while the server starts
            nodes[:] = grid.get_node_ids()
            return len(nodes) >= expected

        wait_until(registered, timeout_s=timeout, poll_s=0.05)  # too few at the deadline: refused below
        replies = grid.send_and_receive(
            [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes], timeout=timeout
        )
        served = {int(r.content["node"]["partition-id"]): r.metadata.src_node_id for r in replies if not r.has_error()}
        sizes = {int(r.content["node"]["num-partitions"]) for r in replies if not r.has_error()}
        if sorted(served) != list(range(expected)) or sizes - {expected}:
            raise ConfigError(
                "num_clients",
                f"{num_clients}, but after {timeout:g} s (runtime.startup_timeout_s) the "
                f"federation's {len(nodes)} nodes serve partitions {sorted(served)[:10]}"
                f"{'...' if len(served) > 10 else ''} of {sorted(sizes)}; allowed: as many clients as "
                "nodes, each serving one partition 0..num_clients-1",
            )
        return cls(served, seed, num_clients, carried, sampling)

    def view(self, grid: Grid) -> FederationView:
        """The grid as the strategies see it (see FederationView)."""
        return FederationView(grid, list(range(self.num_clients)) if self.pooled else list(self.node_of.values()))

    def pick(self, server_round: int, purpose: int, messages: list[Message]) -> tuple[list[Message], list[int]]:
        """The round's partitions for this purpose, in increasing order, and the strategy's message for each: as many
        as it sent messages (fixed), or each partition with the purpose's rate (poisson; the strategy's message,
        the same for every client, sent to each, and none when it sent none: fraction_evaluate=0)."""
        if not messages:
            return [], []
        seed = secret_seed() if self.sampling.secret else self.seed
        if self.sampling.poisson:
            if same_content(messages) is None:
                raise RunFailed(
                    f"round {server_round}: the strategy sent its clients different messages, and Poisson sampling "
                    "sends one message to however many clients it draws"
                )
            chosen = choose_poisson(seed, server_round, purpose, self.sampling.rate(purpose), self.num_clients)
            return [messages[0]] * len(chosen), chosen
        return messages, choose(seed, server_round, purpose, len(messages), self.num_clients)

    def exchange(
        self, grid: Grid, messages: Sequence[Message], partitions: Sequence[int], timeout: float
    ) -> dict[int, Message | None]:
        """Send the strategy's messages to `partitions`: {partition: its reply (an error too), or None if
        none came}, in partition order: aggregation then sums in a fixed order, so reruns match bit for bit."""
        if not partitions:
            return {}
        sent = self.address(messages[: len(partitions)], partitions)
        waiting = {mid: s for mid, s in zip(grid.push_messages([m for m, _ in sent]), sent) if mid}
        lost: dict[str, tuple[Message, list[int]]] = {}  # sent to a node that went offline before it replied
        again: dict[str, int] = {}  # a message sent again: how many times
        replies: dict[int, Message | None] = {}
        next_check = time.monotonic() + ONLINE_CHECK_S

        def answered() -> bool:
            nonlocal next_check
            # By the message answered, not the sender: the SuperLink itself answers for some lost nodes.
            for reply in grid.pull_messages(list(waiting)):
                mid = reply.metadata.reply_to_message_id
                if reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE:
                    lost[mid] = waiting.pop(mid)  # sent again if its node comes back
                    next_check = min(next_check, time.monotonic() + BACK_CHECK_S)
                    continue
                if again.get(mid) and not reply.has_error():
                    mark_retried(reply, Retried(again[mid], RESENT))
                replies.update(answers(reply, *waiting.pop(mid)))
            if (waiting or lost) and time.monotonic() > next_check:
                self.resend_when_back(grid, waiting, lost, again)
                next_check = time.monotonic() + (BACK_CHECK_S if lost else ONLINE_CHECK_S)
            return not waiting and not lost

        if waiting:  # what has not come at the deadline stays None, or an error if its node is offline
            wait_until(answered, timeout_s=timeout, poll_s=POLL_S)
        for message, lost_partitions in lost.values():
            error = Error(code=ErrorCode.NODE_UNAVAILABLE, reason=f"node {message.metadata.dst_node_id} is {OFFLINE}")
            replies.update(answers(Message(error, reply_to=message), message, lost_partitions))
        return {p: replies.get(p) for p in partitions}

    def resend_when_back(
        self,
        grid: Grid,
        waiting: dict[str, tuple[Message, list[int]]],
        lost: dict[str, tuple[Message, list[int]]],
        again: dict[str, int],
    ) -> None:
        """Messages whose node the SuperLink no longer counts online move from `waiting` to `lost` (a node that
        died holding a message never answers it); a lost message whose node is online again (restarted, as
        fedsim's local federation does: fedsim.runtimes.federation) is sent to it again, a new message with
        the same content, and waited for; `again` counts the sends of each."""
        online = set(grid.get_node_ids())
        for mid in [mid for mid, (message, _) in waiting.items() if message.metadata.dst_node_id not in online]:
            lost[mid] = waiting.pop(mid)
        back = [mid for mid, (message, _) in lost.items() if message.metadata.dst_node_id in online]
        if not back:
            return
        resent = [
            Message(m.content, dst_node_id=m.metadata.dst_node_id, message_type=m.metadata.message_type)
            for m, _ in (lost[mid] for mid in back)
        ]
        for old, new_mid, message in zip(back, grid.push_messages(resent), resent):
            if new_mid:
                waiting[new_mid] = (message, lost.pop(old)[1])
                again[new_mid] = again.get(old, 0) + 1

    def address(self, messages: Iterable[Message], partitions: Sequence[int]) -> list[tuple[Message, list[int]]]:
        """The strategy's messages sent to the chosen partitions' nodes instead of its own sample, each with
        the partitions it is for. In a pool, the i-th partition goes to slot i (modulo the pool), its message
        naming it; `carried`: each slot gets one message for all its partitions (fedsim.messages.carried)."""
        messages = list(messages)
        if len(messages) != len(partitions):
            raise ValueError(f"{len(messages)} messages for {len(partitions)} partitions")
        if not self.pooled:
            return [
                (Message(m.content, dst_node_id=self.node_of[p], message_type=m.metadata.message_type), [p])
                for m, p in zip(messages, partitions)
            ]
        slots = len(self.node_of)
        content = same_content(messages) if self.carried else None
        if content is not None:
            shares = [list(partitions[slot::slots]) for slot in range(min(slots, len(partitions)))]
            kind = messages[0].metadata.message_type
            return [
                (
                    Message(carry(content, share, self.num_clients), dst_node_id=self.node_of[slot], message_type=kind),
                    share,
                )
                for slot, share in enumerate(shares)
            ]
        return [
            (
                Message(
                    addressed(m.content, p, self.num_clients),
                    dst_node_id=self.node_of[i % slots],
                    message_type=m.metadata.message_type,
                ),
                [p],
            )
            for i, (m, p) in enumerate(zip(messages, partitions))
        ]


class FederationView:
    """A grid whose nodes are the whole federation, online or not: Flower's strategies size their sample
    by it and wait until that many nodes are online, so a node lost for good would stall every later
    round. fedsim addresses their messages itself (`Participants.address`) and records a lost node's
    messages as failures."""

    def __init__(self, grid: Grid, node_ids: list[int]) -> None:
        self._grid, self._node_ids = grid, node_ids

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str):
        return getattr(self._grid, name)

"""The round loop's client-facing step: a round's cohort asked to train or evaluate, and what came back.

The strategy decides how many clients it wants and what to send them (its messages); the cohort
decides which partitions receive them (from seed and round, fedsim.server.participation), leaves out
the simulated dropouts, exchanges the messages over the grid, and turns the replies into per-client
results keyed by partition: the replies the strategy aggregates (after an omniscient attack's step,
fedsim.server.adversary, has forged its clients' replies), each client's update with its
ground truth (is it malicious, which attack), and every call that brought no usable reply. Whatever
carries the messages, one per client or several clients' work per message, only `exchange` knows;
the loop and the strategy see one reply per client.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import Message
from flwr.serverapp import Grid

from fedsim.messages.records import Decoded
from fedsim.messages.retries import take_retries
from fedsim.messages.sparse import for_aggregation
from fedsim.server.adversary import Adversary
from fedsim.server.faults import Faults
from fedsim.server.participation import EVALUATE, TRAIN, Participants
from fedsim.server.record import DROPPED, EVAL_FAILED, FAILED, LATE, ClientFailure, ClientUpdate, Redone


@dataclass(frozen=True)
class GroundTruth:
    """Which clients the attack made malicious, and its name: written beside every client's row."""

    malicious: frozenset[int] = frozenset()
    attack: str = "none"

    def of(self, client_id: int) -> tuple[bool, str]:
        malicious = client_id in self.malicious
        return malicious, self.attack if malicious else "none"


@dataclass
class Trained:
    """A training exchange: the replies to aggregate (on time, by partition), the updates read from them, and
    every call that brought none (dropped, failed, late)."""

    replies: dict[int, Message]
    updates: list[ClientUpdate]
    failures: list[ClientFailure]
    late: list[ClientFailure] = field(default_factory=list)
    redone: list[Redone] = field(default_factory=list)


@dataclass
class Cohort:
    """How the loop reaches the clients: the federation's participants over `grid`, the simulated faults,
    the ground truth, the precision updates travel in, and how long a round waits for its replies."""

    grid: Grid
    participants: Participants
    faults: Faults
    seed: int
    local_epochs: int
    truth: GroundTruth = field(default_factory=GroundTruth)
    transport: str = "float32"
    timeout_s: float = 3600.0
    adversary: Adversary | None = None  # an omniscient attack's step (fedsim.server.adversary)
    refuse: Callable[[Message], str | None] | None = None  # why a reply counts as failed (DP: a weight other than 1)

    def __post_init__(self) -> None:
        self.slow = self.faults.slow_devices(self.seed, self.participants.num_clients)

    def exchange(
        self, server_round: int, purpose: int, messages: list[Message]
    ) -> tuple[dict, list[int], list[Redone]]:
        """The strategy's messages to the round's chosen partitions, less the simulated dropouts: their replies
        by partition (None: none within the timeout), the partitions that dropped out, and the work that was
        redone (its record taken off the replies)."""
        messages, chosen = self.participants.pick(server_round, purpose, messages)
        dropped = self.faults.dropped(self.seed, server_round, chosen)
        replies = self.participants.exchange(
            self.grid, messages, [p for p in chosen if p not in dropped], self.timeout_s
        )
        phase = "train" if purpose == TRAIN else "evaluate"
        redone = []
        for partition, reply in replies.items():
            if ok(reply) and (retried := take_retries(reply)).count:
                redone.append(Redone(partition, phase, retried.count, retried.reason))
        return replies, dropped, redone

    def train(self, server_round: int, messages: list[Message]) -> Trained:
        replies, dropped, redone = self.exchange(server_round, TRAIN, messages)
        sent = messages[0].content["arrays"] if messages and "arrays" in messages[0].content else None
        refused = {p: why for p, r in replies.items() if ok(r) and self.refuse and (why := self.refuse(r))}
        answered = {
            p: for_aggregation(r, sent, self.transport) for p, r in replies.items() if ok(r) and p not in refused
        }
        if self.adversary is not None and sent is not None:
            self.adversary.forge(server_round, sent, answered)
        # The updates are read first: some of Flower's strategies empty the replies as they aggregate.
        updates = [self._update(p, r) for p, r in answered.items()]
        retried = {again.client_id: again for again in redone}
        for update in updates:
            if (again := retried.get(update.client_id)) is not None:
                update.retries, update.retry_reason = again.retries, again.reason
        failures = [self.missed(p, DROPPED) for p in dropped]
        failures += [self._failure(p, r, FAILED) for p, r in replies.items() if not ok(r)]
        failures += [self.missed(p, FAILED, why) for p, why in refused.items()]
        updates, late = self._clock(server_round, updates)
        on_time = {u.client_id for u in updates}
        return Trained({p: r for p, r in answered.items() if p in on_time}, updates, failures + late, late, redone)

    def evaluate(
        self, server_round: int, messages: list[Message]
    ) -> tuple[list[Message], list[ClientFailure], list[Redone]]:
        """The evaluation replies (in partition order), the calls that failed, and the work redone."""
        replies, _, redone = self.exchange(server_round, EVALUATE, messages)
        failures = [self._failure(p, r, EVAL_FAILED) for p, r in replies.items() if not ok(r)]
        return [r for r in replies.values() if ok(r)], failures, redone

    def missed(self, client_id: int, status: str, error: str | None = None, sim_time_s: float | None = None):
        """A client call that brought no usable reply, with the client's ground truth."""
        malicious, attack = self.truth.of(client_id)
        return ClientFailure(client_id, status, error, malicious, attack, sim_time_s)

    def sim_round_time(self, trained: Trained) -> float | None:
        """The round's simulated duration: the slowest client on time, or the timeout if any was late."""
        if not self.faults.clocked:
            return None
        if trained.late:
            return float(self.faults.round_timeout_s)
        return max((u.sim_time_s for u in trained.updates), default=0.0)

    def _update(self, client_id: int, reply: Message) -> ClientUpdate:
        metrics = reply.content["metrics"]
        loss = float(metrics["train-loss"])
        malicious, attack = self.truth.of(client_id)
        return ClientUpdate(
            client_id=client_id,
            num_examples=int(metrics["num-examples"]),
            train_loss=None if math.isnan(loss) else loss,
            fit_time_s=float(metrics["fit-time"]),
            weights=Decoded(reply.content["arrays"]),  # float32, decoded as read
            is_malicious=malicious,
            attack=attack,
            node=str(reply.content["client"]["node"]) if "client" in reply.content else None,
        )

    def _failure(self, client_id: int, reply: Message | None, status: str) -> ClientFailure:
        error = (
            f"no reply within {self.timeout_s:g} s (runtime.reply_timeout_s)"
            if reply is None
            else str(reply.error.reason).strip()
        )
        return self.missed(client_id, status, error.splitlines()[-1] if error else "unknown error")

    def _clock(self, server_round: int, updates: list[ClientUpdate]) -> tuple[list[ClientUpdate], list]:
        """The updates on time by the simulated clock, and the late ones (fedsim.server.faults)."""
        if not self.faults.clocked:
            return updates, []
        on_time, late = [], []
        for update in updates:
            update.sim_time_s = self.faults.sim_time(
                self.seed,
                server_round,
                update.client_id,
                update.num_examples,
                self.local_epochs,
                update.client_id in self.slow,
            )
            if self.faults.late(update.sim_time_s):
                late.append(self.missed(update.client_id, LATE, sim_time_s=update.sim_time_s))
            else:
                on_time.append(update)
        return on_time, late


def ok(reply: Message | None) -> bool:
    """Whether a reply came and carries no error."""
    return reply is not None and not reply.has_error()

"""fedsim's round loop on Flower's Grid: what `Strategy.start` does, with fedsim choosing the clients,
evaluating centrally, and handing each round to the outputs."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedsim.messages import record_views, to_record
from fedsim.participation import EVALUATE, TRAIN, Participants
from fedsim.record import ClientUpdate, RoundRecord

if TYPE_CHECKING:
    from fedsim.experiment import Session

REPLY_TIMEOUT_S = 3600.0  # as Flower's Strategy.start: how long a round waits for its replies


def run_rounds(grid: Grid, session: Session) -> None:
    """Find the nodes, evaluate the initial model (round 0), then train and evaluate round after round."""
    cfg, strategy = session.cfg, session.strategy
    participants = Participants.discover(grid, cfg.num_clients, cfg.seed)
    started = time.perf_counter()
    arrays = to_record(session.names, session.initial_weights())
    session.end_round(central_round(session, 0, arrays, None, [], {}, started))

    for server_round in range(1, cfg.num_rounds + 1):
        started = time.perf_counter()
        # 1. Choose the round's clients and train: configure_train -> send_and_receive -> aggregate_train.
        train_messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        replies = participants.exchange(grid, train_messages, server_round, TRAIN, REPLY_TIMEOUT_S)
        # The updates are read first: some of Flower's strategies empty the replies as they aggregate.
        updates = [client_update(reply, participants, session) for reply in replies if not reply.has_error()]
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        start, arrays = arrays, aggregated if aggregated is not None else arrays

        # 2. Federated evaluation of the new global model on the clients' validation splits.
        eval_messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
        evaluated = participants.exchange(grid, eval_messages, server_round, EVALUATE, REPLY_TIMEOUT_S)
        fed = federated_metrics(strategy.aggregate_evaluate(server_round, with_examples(evaluated)))

        # 3. Central evaluation on the test split, then the round's outputs.
        metrics = {**fed, "train_loss": train_loss(updates), "num_fit_clients": len(updates),
                   "num_failures": len(train_messages) - len(updates)}
        session.end_round(central_round(session, server_round, arrays, start, updates, metrics, started))


def client_update(reply: Message, participants: Participants, session: Session) -> ClientUpdate:
    metrics = reply.content["metrics"]
    client_id = participants.partition_of[reply.metadata.src_node_id]
    loss = float(metrics["train-loss"])
    return ClientUpdate(
        client_id=client_id,
        num_examples=int(metrics["num-examples"]),
        train_loss=None if math.isnan(loss) else loss,
        fit_time_s=float(metrics["fit-time"]),
        weights=record_views(reply.content["arrays"]),
        is_malicious=client_id in session.malicious,
        attack=session.attack_name if client_id in session.malicious else "none",
    )


def with_examples(replies: Iterable[Message]) -> list[Message]:
    """Replies that evaluated at least one example (weighted means need a positive total)."""
    return [r for r in replies if not r.has_error() and r.content["metrics"]["num-examples"] > 0]


def federated_metrics(aggregated: MetricRecord | None) -> dict[str, float | None]:
    aggregated = aggregated or MetricRecord()
    return {"fed_loss": aggregated.get("loss"), "fed_accuracy": aggregated.get("accuracy")}


def train_loss(updates: list[ClientUpdate]) -> float | None:
    """The example-weighted mean of the clients' training losses (clients that did not train excluded)."""
    pairs = [(u.num_examples, u.train_loss) for u in updates if u.train_loss is not None]
    total = sum(n for n, _ in pairs)
    return sum(n * loss for n, loss in pairs) / total if total else None


def central_round(session: Session, server_round: int, arrays: ArrayRecord, start: ArrayRecord | None,
                  clients: list[ClientUpdate], metrics: dict, started: float) -> RoundRecord:
    """The round's record, with the global model's central evaluation added to its metrics."""
    weights = record_views(arrays)
    central_loss, central_accuracy = session.evaluate(weights)
    return RoundRecord(
        server_round=server_round, names=session.names,
        start_weights=record_views(start) if start is not None else None, global_weights=weights, clients=clients,
        metrics={"round": server_round, "central_loss": central_loss, "central_accuracy": central_accuracy,
                 "num_fit_clients": 0, "num_failures": 0, **metrics},
        started=started,
    )

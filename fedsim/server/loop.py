"""fedsim's round loop on Flower's Grid: what `Strategy.start` does, with fedsim choosing the clients,
evaluating centrally, and handing each round to the outputs.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from omegaconf import DictConfig

from fedsim.model.records import record_views, to_record, viewed
from fedsim.model.transport import VIEWS
from fedsim.privacy.dp import inner_strategy
from fedsim.server.participation import EVALUATE, TRAIN, Participants
from fedsim.server.record import (
    DROPPED,
    EVAL_FAILED,
    FAILED,
    LATE,
    ClientFailure,
    ClientUpdate,
    RoundRecord,
)
from fedsim.system.errors import RunFailed

if TYPE_CHECKING:
    from fedsim.run.session import Session
    from fedsim.server.faults import Faults


def timeouts(cfg: DictConfig) -> tuple[float, float]:
    """(startup, reply) timeouts in seconds: how long the federation may take to answer first
    (runtime.startup_timeout_s), and a round its replies (runtime.reply_timeout_s, 3600 as Flower's
    Strategy.start); runs saved before the keys existed get the defaults."""
    return float(cfg.runtime.startup_timeout_s), float(cfg.runtime.reply_timeout_s)


def run_rounds(grid: Grid, session: Session, slots: int | None = None) -> None:
    """Find the nodes, evaluate the initial model (round 0), then train and evaluate round after round.

    `slots`: the federation is a pool of that many simulated nodes, not one node per client. A resumed
    session starts after its checkpoint's round, from the checkpoint's weights.
    """
    cfg, strategy, faults = session.cfg, session.strategy, session.experiment.faults
    startup_s, reply_s = timeouts(cfg)
    participants = Participants.discover(grid, cfg.num_clients, cfg.seed, slots, timeout=startup_s)
    federation = participants.view(grid)
    started = time.perf_counter()
    arrays = to_record(session.names, session.initial_weights())
    if session.first_round == 0:
        session.end_round(central_round(session, 0, arrays, None, [], {}, started))

    for server_round in range(max(1, session.first_round), cfg.num_rounds + 1):
        started = time.perf_counter()
        # 1. Choose the round's clients and train (the simulated dropouts do not answer): configure_train ->
        #    send_and_receive -> aggregate_train over the replies that came in time.
        train_messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(), federation))
        trained, dropped = send(grid, participants, faults, cfg.seed, train_messages, server_round, TRAIN, reply_s)
        trained = {p: for_aggregation(reply, session.transport) for p, reply in trained.items()}
        # The updates are read first: some of Flower's strategies empty the replies as they aggregate.
        updates = [client_update(p, reply, session) for p, reply in trained.items() if answered(reply)]
        failures = [session.missed(p, DROPPED) for p in dropped]
        failures += [
            client_failure(p, reply, FAILED, session, reply_s) for p, reply in trained.items() if not answered(reply)
        ]
        updates, late = session.clock(server_round, updates)
        failures += late
        on_time = {u.client_id for u in updates}
        check_enough(server_round, updates, failures, int(getattr(inner_strategy(strategy), "min_train_nodes", 1)))
        session.reseed(server_round)  # Flower's DP noise draws from NumPy's global generator
        aggregated, _ = strategy.aggregate_train(server_round, [r for p, r in trained.items() if p in on_time])
        start, arrays = arrays, aggregated if aggregated is not None else arrays

        # 2. Federated evaluation of the new global model on the clients' validation splits.
        eval_messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), federation))
        evaluated, _ = send(grid, participants, faults, cfg.seed, eval_messages, server_round, EVALUATE, reply_s)
        failures += [
            client_failure(p, reply, EVAL_FAILED, session, reply_s)
            for p, reply in evaluated.items()
            if not answered(reply)
        ]
        fed = federated_metrics(strategy.aggregate_evaluate(server_round, with_examples(evaluated.values())))

        # 3. Central evaluation on the test split, then the round's outputs.
        metrics = {
            **fed,
            "train_loss": train_loss(updates),
            "num_fit_clients": len(updates),
            "num_failures": sum(f.is_error for f in failures),
            "num_dropped": sum(f.status == DROPPED for f in failures),
            "num_late": sum(f.status == LATE for f in failures),
            "sim_round_time_s": session.sim_round_time(updates, late),
        }
        record = central_round(session, server_round, arrays, start, updates, metrics, started)
        record.failures = failures
        session.end_round(record)


def send(
    grid: Grid,
    participants: Participants,
    faults: Faults,
    seed: int,
    messages: list[Message],
    server_round: int,
    purpose: int,
    timeout_s: float,
) -> tuple[dict[int, Message | None], list[int]]:
    """The strategy's messages to the round's chosen partitions, less the simulated dropouts: their
    replies by partition (None: none within `timeout_s`), and the partitions that dropped out."""
    chosen = participants.pick(server_round, purpose, len(messages))
    dropped = faults.dropped(seed, server_round, chosen)
    return participants.exchange(grid, messages, [p for p in chosen if p not in dropped], timeout_s), dropped


def for_aggregation(reply: Message | None, transport: str) -> Message | None:
    """A training reply as the strategy aggregates it: arrays that decode without a copy, read as float32
    where the update travelled in float16/bfloat16, so the strategy aggregates in float32."""
    if answered(reply):
        reply.content["arrays"] = viewed(reply.content["arrays"], VIEWS[transport])
    return reply


def answered(reply: Message | None) -> bool:
    return reply is not None and not reply.has_error()


def client_update(client_id: int, reply: Message, session: Session) -> ClientUpdate:
    metrics = reply.content["metrics"]
    loss = float(metrics["train-loss"])
    return ClientUpdate(
        client_id=client_id,
        num_examples=int(metrics["num-examples"]),
        train_loss=None if math.isnan(loss) else loss,
        fit_time_s=float(metrics["fit-time"]),
        weights=[array.numpy() for array in reply.content["arrays"].values()],  # for_aggregation's float32 views
        is_malicious=client_id in session.malicious,
        attack=session.attack_name if client_id in session.malicious else "none",
        node=str(reply.content["client"]["node"]) if "client" in reply.content else None,
    )


def client_failure(
    client_id: int, reply: Message | None, status: str, session: Session, timeout_s: float
) -> ClientFailure:
    error = (
        f"no reply within {timeout_s:g} s (runtime.reply_timeout_s)"
        if reply is None
        else str(reply.error.reason).strip()
    )
    return session.missed(client_id, status, error.splitlines()[-1] if error else "unknown error")


def check_enough(
    server_round: int, updates: list[ClientUpdate], failures: list[ClientFailure], min_train_nodes: int
) -> None:
    """Stop the run when fewer than min_train_nodes clients trained, with the clients' own error."""
    if len(updates) >= min_train_nodes:
        return
    errors = Counter(f.error for f in failures if f.is_error)
    error, count = errors.most_common(1)[0] if errors else ("dropped out or late (simulated faults)", 0)
    raise RunFailed(
        f"round {server_round}: {len(failures)} of {len(updates) + len(failures)} clients failed to "
        f"train, fewer than strategy.min_train_nodes={min_train_nodes} answered; "
        f"{count} with: {error}"
    )


def with_examples(replies: Iterable[Message | None]) -> list[Message]:
    """Replies that evaluated at least one example (weighted means need a positive total)."""
    return [r for r in replies if answered(r) and r.content["metrics"]["num-examples"] > 0]


def federated_metrics(aggregated: MetricRecord | None) -> dict[str, float | None]:
    aggregated = aggregated or MetricRecord()
    return {"fed_loss": aggregated.get("loss"), "fed_accuracy": aggregated.get("accuracy")}


def train_loss(updates: list[ClientUpdate]) -> float | None:
    """The example-weighted mean of the clients' training losses (clients that did not train excluded)."""
    pairs = [(u.num_examples, u.train_loss) for u in updates if u.train_loss is not None]
    total = sum(n for n, _ in pairs)
    return sum(n * loss for n, loss in pairs) / total if total else None


def central_round(
    session: Session,
    server_round: int,
    arrays: ArrayRecord,
    start: ArrayRecord | None,
    clients: list[ClientUpdate],
    metrics: dict,
    started: float,
) -> RoundRecord:
    """The round's record, with the global model's central evaluation added to its metrics."""
    weights = record_views(arrays)
    central_loss, central_accuracy = session.evaluate(weights)
    return RoundRecord(
        server_round=server_round,
        names=session.names,
        start_weights=record_views(start) if start is not None else None,
        global_weights=weights,
        clients=clients,
        metrics={
            "round": server_round,
            "central_loss": central_loss,
            "central_accuracy": central_accuracy,
            "num_fit_clients": 0,
            "num_failures": 0,
            **metrics,
        },
        started=started,
    )

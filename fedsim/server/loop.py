"""fedsim's round loop on Flower's Grid: what `Strategy.start` does, with fedsim choosing the clients,
evaluating centrally, and handing each round to the outputs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp.strategy import Strategy

from fedsim.messages.records import record_views, to_record
from fedsim.privacy.dp import inner_strategy
from fedsim.privacy.randomness import NoiseSource
from fedsim.server.cohort import Cohort, Trained
from fedsim.server.record import DROPPED, LATE, ClientUpdate, RoundRecord
from fedsim.system.errors import RunFailed
from fedsim.system.memory import small_buffers_on_heap

AGGREGATION_HEAP_BYTES = 1 << 30  # buffers up to a large transformer's tensor, while Flower's strategy aggregates


@dataclass
class Start:
    """Where the rounds begin: round 0 (the initial model) for a fresh run, the round after its checkpoint's for a
    resumed one, from these weights (in `names`' order)."""

    first_round: int
    weights: list[np.ndarray]
    names: list[str]


@dataclass
class Result:
    """What the rounds produced, as Flower's `Strategy.start` returns it: the final global model and each round's
    metrics (rounds.csv's rows)."""

    arrays: ArrayRecord
    metrics: dict[int, dict] = field(default_factory=dict)


def run_rounds(
    strategy: Strategy,
    cohort: Cohort,
    start: Start,
    num_rounds: int,
    evaluate_fn: Callable[[list[np.ndarray]], tuple[float, float]],
    outputs: Callable[[RoundRecord], None],
    noise: NoiseSource,
) -> Result:
    """Evaluate the initial model (round 0), then train, evaluate and record round after round.

    The parts are explicit, as in Flower's `Strategy.start`: the strategy (how many clients, what they are sent,
    how replies aggregate), the cohort (which clients answer and what they replied), the central evaluation,
    and the round's outputs (every callback, fed one record); `noise` seeds each round's DP noise.
    """
    federation = cohort.participants.view(cohort.grid)
    arrays = to_record(start.names, start.weights)
    result = Result(arrays)
    if start.first_round == 0:
        began = time.perf_counter()
        record = central_round(start.names, evaluate_fn(record_views(arrays)), 0, arrays, None, [], {}, began)
        outputs(record)
        result.metrics[0] = record.metrics
    for server_round in range(max(1, start.first_round), num_rounds + 1):
        began = time.perf_counter()
        # 1. Train the round's clients, then aggregate the replies that came in time.
        trained = cohort.train(
            server_round, list(strategy.configure_train(server_round, arrays, ConfigRecord(), federation))
        )
        check_enough(server_round, trained, int(getattr(inner_strategy(strategy), "min_train_nodes", 1)))
        noise.seed_round(server_round)  # Flower's DP noise draws from NumPy's global generator
        with small_buffers_on_heap(AGGREGATION_HEAP_BYTES):  # its per-reply temporaries reuse the heap
            aggregated, _ = strategy.aggregate_train(server_round, list(trained.replies.values()))
        previous, arrays = arrays, aggregated if aggregated is not None else arrays

        # 2. Federated evaluation of the new global model on the clients' validation splits, while the driver,
        # idle until their replies come, evaluates it centrally on the test split (the same numbers either way).
        with ThreadPoolExecutor(1, thread_name_prefix="central-evaluation") as central:
            central_metrics = central.submit(evaluate_fn, record_views(arrays))
            evaluated, eval_failures, eval_redone = cohort.evaluate(
                server_round, list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), federation))
            )
            fed = federated_metrics(strategy.aggregate_evaluate(server_round, with_examples(evaluated)))
            evaluation = central_metrics.result()

        # 3. The round's outputs.
        failures = trained.failures + eval_failures
        metrics = {
            **fed,
            "train_loss": train_loss(trained.updates),
            "num_fit_clients": len(trained.updates),
            "num_failures": sum(f.is_error for f in failures),
            "num_dropped": sum(f.status == DROPPED for f in failures),
            "num_late": sum(f.status == LATE for f in failures),
            "sim_round_time_s": cohort.sim_round_time(trained),
        }
        record = central_round(start.names, evaluation, server_round, arrays, previous, trained.updates, metrics, began)
        record.failures, record.redone = failures, trained.redone + eval_redone
        outputs(record)
        result.arrays, result.metrics[server_round] = arrays, record.metrics
    return result


def check_enough(server_round: int, trained: Trained, min_train_nodes: int) -> None:
    """Stop the run when fewer than min_train_nodes of the clients drawn trained, with the clients' own error. A
    fixed-size draw has at least min_train_nodes (Flower's formula); a Poisson draw may have fewer, even none, and a
    round that drew few is no failure: then all of them must have trained."""
    drawn = len(trained.updates) + len(trained.failures)
    if len(trained.updates) >= min(min_train_nodes, drawn):
        return
    errors = Counter(f.error for f in trained.failures if f.is_error)
    error, count = errors.most_common(1)[0] if errors else ("dropped out or late (simulated faults)", 0)
    raise RunFailed(
        f"round {server_round}: {len(trained.failures)} of {len(trained.updates) + len(trained.failures)} clients "
        f"failed to train, fewer than strategy.min_train_nodes={min_train_nodes} answered; {count} with: {error}"
    )


def with_examples(replies: Iterable[Message]) -> list[Message]:
    """Replies that evaluated at least one example (weighted means need a positive total)."""
    return [r for r in replies if r.content["metrics"]["num-examples"] > 0]


def federated_metrics(aggregated: MetricRecord | None) -> dict[str, float | None]:
    aggregated = aggregated or MetricRecord()
    return {"fed_loss": aggregated.get("loss"), "fed_accuracy": aggregated.get("accuracy")}


def train_loss(updates: list[ClientUpdate]) -> float | None:
    """The example-weighted mean of the clients' training losses (clients that did not train excluded)."""
    pairs = [(u.num_examples, u.train_loss) for u in updates if u.train_loss is not None]
    total = sum(n for n, _ in pairs)
    return sum(n * loss for n, loss in pairs) / total if total else None


def central_round(
    names: list[str],
    evaluation: tuple[float, float],
    server_round: int,
    arrays: ArrayRecord,
    start: ArrayRecord | None,
    clients: list[ClientUpdate],
    metrics: dict,
    started: float,
) -> RoundRecord:
    """The round's record, with the global model's central evaluation (loss, accuracy) added to its metrics."""
    weights = record_views(arrays)
    central_loss, central_accuracy = evaluation
    return RoundRecord(
        server_round=server_round,
        names=names,
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

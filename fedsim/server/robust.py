"""Byzantine-robust aggregation as Flower Message-API strategies: each changes only how a round's training replies
aggregate (FedAvg's sampling, configuration, evaluation and metrics stay), so evaluation, resume and every output
work unchanged. The maths is fedsim.byzantine's, on the round's update matrix: a row per reply, u = w - g with g the
global model the round sent (fedsim.server.updates: dense, or sparse where the clients changed few weights). A row a
client did not touch is a zero update either way, exactly as in its dense reply.

- `CenteredClipping`, `GeometricMedian` and `MultiKrum`: aggregators (conf/strategy/).
- `Bulyan`: Flower's Bulyan with the paper's recursive Krum selection (or Flower's own one-shot one).
- `PreAggregated`: a pre-aggregation step (`NNM`, `Bucketing`, `ARC`; conf/pre/) in front of any strategy: the
  replies' updates are mixed, then the wrapped strategy aggregates the mixed replies.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan as FlowerBulyan
from flwr.serverapp.strategy import FedAvg, Strategy

from fedsim.byzantine import aggregators
from fedsim.byzantine.vectors import Matrix, centred_gram, row, squared_distances, weights_from
from fedsim.messages.records import record_views, to_record, viewed
from fedsim.server.updates import ARRAYS, content_matrix, update_matrix
from fedsim.system.around import Around

METRICS, EXAMPLES = "metrics", "num-examples"


def examples_of(replies: Sequence[Message], key: str = EXAMPLES) -> np.ndarray:
    return np.array([float(r.content[METRICS][key]) for r in replies])


class RobustFedAvg(FedAvg):
    """FedAvg whose aggregation of the weights is `aggregate_updates` on the round's update matrix. The sent model
    is kept as a tuple of views: the round's input, not strategy state that a checkpoint should hold."""

    robust = True  # Flower's DP wrappers do not apply (fedsim.privacy.dp)

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._start: tuple[np.ndarray, ...] = ()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._start = tuple(record_views(arrays))
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [reply for reply in replies if not reply.has_error()]  # a failed client's reply carries no update
        if not valid:
            return None, None
        names = list(valid[0].content[ARRAYS].keys())
        update = self.aggregate_updates(update_matrix(valid, self._start), examples_of(valid, self.weighted_by_key))
        arrays = to_record(names, weights_from(update.astype(np.float32), self._start))
        return arrays, self.train_metrics_aggr_fn([r.content for r in valid], self.weighted_by_key)

    def aggregate_updates(self, matrix: Matrix, examples: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class CenteredClipping(RobustFedAvg):
    """Centered clipping, centred where its paper centres it: at the previous round's aggregate update (the
    server's momentum; zero before the first round), which the checkpoint keeps (`center`). Unweighted, as the
    paper: every reply counts once, whatever its number of examples."""

    def __init__(self, tau: float = 1.0, iterations: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.tau, self.iterations = float(tau), int(iterations)
        self.center: np.ndarray | None = None

    def aggregate_updates(self, matrix: Matrix, examples: np.ndarray) -> np.ndarray:
        start = self.center if self.center is not None else np.zeros(matrix.shape[1])
        self.center = aggregators.centered_clipping(matrix, start, self.tau, self.iterations)
        return self.center


class GeometricMedian(RobustFedAvg):
    """The geometric median by RFA's smoothed Weiszfeld, from RFA's start, the weighted mean of the updates.
    `weighted`: alpha_i proportional to each reply's examples, as RFA weighs its clients; false: uniform, as ByzFL."""

    def __init__(self, nu: float = 1e-6, iterations: int = 8, weighted: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nu, self.iterations, self.weighted = float(nu), int(iterations), bool(weighted)

    def aggregate_updates(self, matrix: Matrix, examples: np.ndarray) -> np.ndarray:
        weights = examples / examples.sum() if self.weighted and examples.sum() > 0 else None
        return aggregators.geometric_median(matrix, self.nu, self.iterations, weights)


class MultiKrum(RobustFedAvg):
    """Multi-Krum (Blanchard et al., NeurIPS 2017) on the round's update matrix: the mean of the m updates with the
    smallest Krum scores (over their n - f - 2 nearest, the paper's count and Flower's). `m` None: n - f, n the
    round's replies (ByzFL's m); fewer replies than m (failures) average those there are. `weighted` false: the plain
    mean, as the paper and ByzFL; true: weighted by examples, as Flower's MultiKrum. Flower's Krum (one update) stays
    Flower's (conf/strategy/krum.yaml)."""

    def __init__(self, num_malicious_nodes: int = 0, m: int | None = None, weighted: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_malicious_nodes, self.weighted = int(num_malicious_nodes), bool(weighted)
        self.m = None if m is None else int(m)

    def aggregate_updates(self, matrix: Matrix, examples: np.ndarray) -> np.ndarray:
        n = matrix.shape[0]
        m = max(1, min(n, self.m if self.m is not None else n - self.num_malicious_nodes))
        return aggregators.multi_krum(matrix, self.num_malicious_nodes, m, examples if self.weighted else None)


class Bulyan(FlowerBulyan):
    """Flower's Bulyan (El Mhamdi, Guerraoui & Rouault, ICML 2018) whose first step, the selection of theta = n - 2f
    updates, is the paper's by default: Krum applied recursively, each pick removed from those that remain
    (`selection` recursive, fedsim.byzantine.aggregators.recursive_krum, float64 distances of the round's updates).
    `selection` one_shot keeps Flower's own, the theta best scores of one Multi-Krum scoring of all n. The
    coordinate-wise second step is Flower's either way."""

    def __init__(self, selection: str = "recursive", **kwargs) -> None:
        if selection not in aggregators.SELECTIONS:
            raise ValueError(f"selection {selection!r}; allowed: {', '.join(aggregators.SELECTIONS)}")
        super().__init__(selection_rule=self.select_recursively if selection == "recursive" else None, **kwargs)
        self.selection = selection
        self._start: tuple[np.ndarray, ...] = ()  # the sent model, as RobustFedAvg keeps it

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._start = tuple(record_views(arrays))
        return super().configure_train(server_round, arrays, config, grid)

    def select_recursively(self, contents: list[RecordDict], num_malicious_nodes: int, theta: int) -> list[RecordDict]:
        """Flower's `selection_rule`: the replies' contents that recursive Krum chooses, in the order chosen."""
        _, gram = centred_gram(content_matrix(contents, self._start))
        return [contents[i] for i in aggregators.recursive_krum(squared_distances(gram), num_malicious_nodes, theta)]


@dataclass(frozen=True)
class PreStep:
    """A pre-aggregation step: the round's update matrix in, the mixed rows out, and which replies each mixed row
    stands for (its examples: their mean)."""

    name: str = "none"

    def mix(self, matrix: Matrix, server_round: int) -> tuple[Matrix, list[list[int]]]:
        raise NotImplementedError


def each_alone(matrix: Matrix) -> list[list[int]]:
    """A mixed row per reply, standing for that reply alone."""
    return [[i] for i in range(matrix.shape[0])]


@dataclass(frozen=True)
class NNM(PreStep):
    """Nearest-neighbour mixing with f, the malicious clients it is tuned for."""

    f: int = 0

    def mix(self, matrix: Matrix, server_round: int) -> tuple[Matrix, list[list[int]]]:
        return aggregators.nnm(matrix, min(self.f, matrix.shape[0] - 1)), each_alone(matrix)


@dataclass(frozen=True)
class Bucketing(PreStep):
    """Bucketing into buckets of s, the permutation drawn from (seed, round)."""

    s: int = 2
    seed: int = 0

    def mix(self, matrix: Matrix, server_round: int) -> tuple[Matrix, list[list[int]]]:
        order = np.random.default_rng([self.seed, 0xB0C, server_round]).permutation(matrix.shape[0])
        buckets = [list(order[at : at + self.s]) for at in range(0, matrix.shape[0], self.s)]
        return aggregators.bucketing(matrix, self.s, order), buckets


@dataclass(frozen=True)
class ARC(PreStep):
    """Adaptive robust clipping with f."""

    f: int = 0

    def mix(self, matrix: Matrix, server_round: int) -> tuple[Matrix, list[list[int]]]:
        return aggregators.arc(matrix, min(self.f, matrix.shape[0])), each_alone(matrix)


class PreAggregated(Around):
    """`strategy` aggregating the replies that `step` mixed. Each mixed reply carries the metrics of the first
    reply it stands for, with the mean number of examples of those it stands for."""

    robust = True

    def __init__(self, strategy: Strategy, step: PreStep) -> None:
        self.strategy, self.step = strategy, step
        self._start: tuple[np.ndarray, ...] = ()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._start = tuple(record_views(arrays))
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = [r for r in replies if not r.has_error()]
        if not valid:
            return self.strategy.aggregate_train(server_round, valid)
        names = list(valid[0].content[ARRAYS].keys())
        mixed, members = self.step.mix(update_matrix(valid, self._start), server_round)
        examples = examples_of(valid)
        rebuilt = []
        for i, stands_for in enumerate(members):
            first = valid[stands_for[0]]
            metrics = MetricRecord(dict(first.content[METRICS]))
            metrics[EXAMPLES] = int(round(examples[stands_for].mean()))
            reply = copy.copy(first)
            reply.content = RecordDict(
                {
                    ARRAYS: viewed(to_record(names, weights_from(row(mixed, i).astype(np.float32), self._start))),
                    METRICS: metrics,
                }
            )
            rebuilt.append(reply)
        return self.strategy.aggregate_train(server_round, rebuilt)

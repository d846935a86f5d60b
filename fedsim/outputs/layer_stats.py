"""Weight scrutiny: how much the clients of a round disagree, per layer and per client.

Everything is computed from one round's weights at a time, one layer at a time, so memory is
bounded by a round's updates. `python -m fedsim.outputs.layer_stats RUN_DIR` recomputes the same tables
offline from an archive written with archive.mode=all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from fedsim.outputs.base import Phase
from fedsim.outputs.columns import LAYER_COLUMNS
from fedsim.outputs.csv_logs import CsvOutput
from fedsim.outputs.quantiles import RADIX_MIN, bucket_counts, exact_quantiles
from fedsim.server.record import RoundRecord
from fedsim.system.memory import small_buffers_on_heap

OUTLIER_Z = 3.0


BLOCK = 1 << 14  # elements per block: a (k, BLOCK) float64 block stays in cache


PARTS = 8  # element ranges per layer, scanned in parallel


_POOL: ThreadPoolExecutor | None = None


class LayerStatistics:
    """Statistics of one layer across k clients, accumulated over disjoint ranges of elements.

    mean_variance: mean over elements of the population variance across clients.
    num_outliers: elements x[i, j] with |x[i, j] - mean_j| / std_j > 3 (std over clients, ddof 0;
    elements where every client agrees have no outliers). With k clients |z| cannot exceed
    sqrt(k - 1), so outliers need k >= 11.
    weight_*: over all k * elements values (exact quantiles, linear interpolation); weight_std
    comes from the law of total variance (mean of the per-element variances + variance of the
    per-element means), which is exact.
    first_weight: the layer's first element, averaged over clients.
    """

    def __init__(self, num_clients: int, num_elements: int) -> None:
        self.k = num_clients
        self.means = np.empty(num_elements)

    def scan(
        self,
        clients: Sequence[np.ndarray],
        lo: int,
        hi: int,
        updates: UpdateStatistics | None = None,
        start_weights: np.ndarray | None = None,
    ) -> tuple[float, int, np.ndarray | None, float, float]:
        """Elements lo..hi of every client's flat layer, a cache-sized block at a time (never the
        whole layer stacked): (sum of variances, outliers, bucket counts, min, max); feeds `updates`."""
        variance_sum, outliers, low, high = 0.0, 0, np.inf, -np.inf
        counts = np.zeros(1 << 16, dtype=np.int64) if self.k * len(self.means) >= RADIX_MIN else None
        for start in range(lo, hi, BLOCK):
            end = min(start + BLOCK, hi)
            block = np.stack([np.asarray(c[start:end], dtype=np.float32) for c in clients])
            low, high = min(low, float(block.min())), max(high, float(block.max()))
            if counts is not None:
                counts += bucket_counts(block)
            wide = block.astype(np.float64)
            mean = wide.mean(axis=0)
            deviation = wide - mean
            variance = np.einsum("ij,ij->j", deviation, deviation) / self.k
            self.means[start:end] = mean
            variance_sum += float(variance.sum())
            if self.k > OUTLIER_Z**2 + 1:
                # Compared in float64 with a relative margin, so float rounding never lifts |z| = 3
                # exactly over the threshold. Where all clients agree, std is 0 and so is every deviation.
                threshold = OUTLIER_Z * np.sqrt(variance) * (1 + 1e-6)
                outliers += int(np.count_nonzero(np.abs(deviation) > threshold))
            if updates is not None:
                updates.add_layer(wide - start_weights[start:end])
        return variance_sum, outliers, counts, low, high

    def result(self, clients: Sequence[np.ndarray], scanned: list[tuple]) -> dict[str, float]:
        """The layer's row from its clients' flat arrays and the scans of all its ranges."""
        mean_variance = sum(s[0] for s in scanned) / max(len(self.means), 1)
        counts = np.sum([s[2] for s in scanned], axis=0) if scanned[0][2] is not None else None
        q25, median, q75 = exact_quantiles(list(clients), [0.25, 0.5, 0.75], counts)
        return {
            "num_clients": self.k,
            "mean_variance": mean_variance,
            "num_outliers": sum(s[1] for s in scanned),
            "weight_min": min(s[3] for s in scanned),
            "weight_max": max(s[4] for s in scanned),
            "weight_mean": float(self.means.mean()),
            "weight_median": median,
            "weight_std": float(np.sqrt(mean_variance + self.means.var())),
            "weight_q25": q25,
            "weight_q75": q75,
            "first_weight": float(self.means[0]),
        }


def _ranges(num_elements: int) -> list[tuple[int, int]]:
    """Up to PARTS element ranges of whole blocks, fixed by the size alone: summed in this order,
    results do not depend on the core count."""
    parts = min(PARTS, -(-num_elements // BLOCK))
    bounds = np.linspace(0, num_elements // BLOCK, parts + 1).astype(int) * BLOCK
    bounds[-1] = num_elements
    return [(int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=min(PARTS, os.cpu_count() or 1), thread_name_prefix="scrutiny")
    return _POOL


def layer_pass(
    clients: Sequence[np.ndarray] | np.ndarray, start_weights: np.ndarray | None = None
) -> tuple[dict, UpdateStatistics | None]:
    """One layer's statistics from each client's flat copy of it (a list, or the rows of a
    stack), and its update statistics when `start_weights` (flat) is given.

    The element ranges run on a thread per core (NumPy releases the GIL in its loops).
    """
    clients = [np.ravel(c) for c in clients]
    stats = LayerStatistics(len(clients), clients[0].size)
    ranges = _ranges(clients[0].size)
    parts = [UpdateStatistics(len(clients)) if start_weights is not None else None for _ in ranges]
    scanned = list(_pool().map(lambda job: stats.scan(clients, *job[0], job[1], start_weights), zip(ranges, parts)))
    updates = UpdateStatistics.merge(parts) if start_weights is not None else None
    return stats.result(clients, scanned), updates


def layer_statistics(stack: np.ndarray) -> dict[str, float]:
    """LayerStatistics of one layer; `stack` has shape (k, ...), one row per client."""
    return layer_pass(list(stack.reshape(stack.shape[0], -1)))[0]


def coordinate_median(stack: np.ndarray) -> np.ndarray:
    """Median over axis 0 (k rows), as np.median(stack, axis=0).

    For k <= 16 an odd-even transposition network of k whole-row min/max steps: a few NumPy
    calls per block instead of one tiny sort per column. Above, row sorts of the transposed block,
    1,024 columns at a time, which beat np.median's per-column partition (docs/benchmarks/measured.md).
    """
    k = stack.shape[0]
    if k > 16:
        median = np.empty(stack.shape[1], dtype=stack.dtype)
        for start in range(0, stack.shape[1], 1024):
            ordered = np.sort(stack[:, start : start + 1024].T, axis=1)
            median[start : start + 1024] = (
                ordered[:, k // 2] if k % 2 else (ordered[:, k // 2 - 1] + ordered[:, k // 2]) / 2
            )
        return median
    ordered = stack.copy()
    for phase in range(k):
        low, high = ordered[phase % 2 : k - 1 : 2], ordered[phase % 2 + 1 : k : 2]
        smaller = np.minimum(low, high)
        np.maximum(low, high, out=high)
        low[...] = smaller
    return ordered[k // 2] if k % 2 else (ordered[k // 2 - 1] + ordered[k // 2]) / 2


class UpdateStatistics:
    """Per-client update statistics accumulated layer by layer (or block by block).

    update_i = client i's weights - the global weights it started from (all layers, flattened).
    update_norm: ||update_i||_2.
    cosine_to_mean: cosine between update_i and the mean update of the other clients of the round.
    distance_to_median: ||update_i - coordinate-wise median of the round's updates||_2.
    norm_zscore: (update_norm_i - mean of the round's norms) / their std (ddof 0; 0 when all equal).
    """

    def __init__(self, num_clients: int) -> None:
        self.k = num_clients
        self.sq_norm = np.zeros(num_clients)
        self.dot_others = np.zeros(num_clients)
        self.sq_norm_others = np.zeros(num_clients)
        self.sq_dist_median = np.zeros(num_clients)

    def add_layer(self, updates: np.ndarray) -> None:
        """Accumulate some elements' updates, shape (k, ...); dot products come from one k x k Gram matrix."""
        wide = updates.reshape(self.k, -1).astype(np.float64)
        gram = wide @ wide.T
        own = np.diag(gram)
        with_all = gram.sum(axis=1)
        others = max(self.k - 1, 1)
        self.sq_norm += own
        self.dot_others += (with_all - own) / others
        self.sq_norm_others += (gram.sum() - 2 * with_all + own) / others**2
        # The median in float32: half the memory traffic; it only serves as a reference point.
        deviation = wide - coordinate_median(wide.astype(np.float32))
        self.sq_dist_median += np.einsum("ij,ij->i", deviation, deviation)

    @staticmethod
    def merge(parts: Sequence[UpdateStatistics]) -> UpdateStatistics:
        """Sum of statistics over disjoint elements, in the given order."""
        total = UpdateStatistics(parts[0].k)
        for part in parts:
            total.add(part)
        return total

    def add(self, other: UpdateStatistics) -> None:
        """Add the statistics of other elements (another layer or range)."""
        self.sq_norm += other.sq_norm
        self.dot_others += other.dot_others
        self.sq_norm_others += other.sq_norm_others
        self.sq_dist_median += other.sq_dist_median

    def rows(self) -> list[dict[str, float]]:
        norms = np.sqrt(self.sq_norm)
        denominator = norms * np.sqrt(self.sq_norm_others)
        cosine = np.divide(self.dot_others, denominator, out=np.zeros(self.k), where=denominator > 0)
        spread = norms.std()
        zscores = (norms - norms.mean()) / spread if spread > 0 else np.zeros(self.k)
        return [
            {
                "update_norm": float(n),
                "cosine_to_mean": float(c) if self.k > 1 else float("nan"),
                "distance_to_median": float(d),
                "norm_zscore": float(z),
            }
            for n, c, d, z in zip(norms, cosine, np.sqrt(self.sq_dist_median), zscores)
        ]


def round_statistics(
    names: Sequence[str], global_weights: Sequence[np.ndarray], client_weights: Sequence[Sequence[np.ndarray]]
) -> tuple[list[dict], list[dict]]:
    """(layer rows, client rows) of one round; client rows follow the order of `client_weights`.

    One layer at a time, in blocks of elements gathered from every client's array, so the float64
    work stays in cache and the memory beyond the round's own weights is a few blocks per thread.
    """
    # One BLAS thread per scan thread: OpenBLAS's own threads, on top of ours, oversubscribe the cores
    # in the k x k Gram products.
    with small_buffers_on_heap(), threadpool_limits(1, user_api="blas"):
        return _round_statistics(names, global_weights, client_weights)


def _round_statistics(
    names: Sequence[str], global_weights: Sequence[np.ndarray], client_weights: Sequence[Sequence[np.ndarray]]
) -> tuple[list[dict], list[dict]]:
    updates = UpdateStatistics(len(client_weights))
    layer_rows = []
    for index, name in enumerate(names):
        if not np.issubdtype(np.asarray(global_weights[index]).dtype, np.floating):
            continue  # integer buffers (counters, ids) carry no learned signal
        clients = [np.ravel(w[index]) for w in client_weights]
        if clients[0].size == 0:
            continue
        stats, layer_updates = layer_pass(clients, np.asarray(global_weights[index], dtype=np.float64).ravel())
        updates.add(layer_updates)
        layer_rows.append({"layer": name, **stats})
    return layer_rows, updates.rows()


class WeightScrutiny(CsvOutput):
    """layers.csv, and each update's statistics (update_norm, cosine_to_mean, ...) for clients.csv.

    Not `enabled` (scrutiny=false): layers.csv keeps only its header and nothing is computed. A producer: each
    update's statistics are in place before clients.csv is written.
    """

    phase = Phase.PRODUCE

    def __init__(self, path: Path, attack: str, node_ratio: float, enabled: bool = True) -> None:
        super().__init__(path, LAYER_COLUMNS)
        self.ground_truth = {"attack": attack, "malicious_node_ratio": node_ratio}
        self.enabled = enabled

    def on_round_end(self, record: RoundRecord) -> None:
        if not self.enabled or not record.clients or record.start_weights is None:
            return
        layer_rows, update_rows = round_statistics(
            record.names, record.start_weights, [update.weights for update in record.clients]
        )
        self.log.write([{"round": record.server_round, **row, **self.ground_truth} for row in layer_rows])
        for update, stats in zip(record.clients, update_rows):
            update.stats.update(stats)

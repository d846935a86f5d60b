"""Which rows each client holds: flwr-datasets' partitioners (conf/partition/, some through
fedsim.data.partitioners), run once by the driver into a small cached table that clients only read, and each
client's split into local train and validation rows.
"""

from __future__ import annotations

import functools
import inspect
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import get_method, instantiate
from safetensors.numpy import load_file

from fedsim.data.cache import is_intact, save_cached
from fedsim.data.features import cache_key
from fedsim.system.errors import ConfigError, first_line


def check_partitions(partition_file: str, val_fraction: float, seed: int, fraction_evaluate: float) -> None:
    """Refuse partitions that leave a client nothing to train on, or (when clients evaluate) nothing to evaluate."""
    sizes = np.diff(_partition_arrays(partition_file)["indptr"])
    for client_id, size in enumerate(sizes):
        _, val_rows = train_val_split(np.arange(size), val_fraction, seed, client_id)
        if size < 1 or (fraction_evaluate > 0 and len(val_rows) == 0) or size - len(val_rows) < 1:
            raise ConfigError(
                "data.val_fraction",
                f"client {client_id} holds {size} rows, {len(val_rows)} of them "
                f"for validation at data.val_fraction={val_fraction}: nothing left to "
                f"{'train on' if size - len(val_rows) < 1 else 'evaluate'}; allowed: partitions "
                "of at least 2 rows (more data.train_size, fewer num_clients, another partition)",
            )


# A partitioner that draws until every partition holds `min_partition_size` rows gives up after its own tries
# (flwr-datasets' Dirichlet: 10 draws, then ValueError). Such a draw is made again from a seed derived from
# (seed, attempt), at most this many times: the first attempt is the partitioner's own seed, so every partition
# it makes on its own is unchanged, and a seed it gives up on still gets a partition, reproducibly.
REDRAWS = 100


def redraw_seed(seed: int, attempt: int) -> int:
    """The partitioner's seed for its `attempt`-th draw: its own first, then one derived from (seed, attempt)."""
    if attempt == 0:
        return seed
    return int(np.random.SeedSequence([seed, 0x9A27, attempt]).generate_state(1)[0])


LENGTH = "length"  # the column a partitioner may partition by besides `label`: a review's length in words


def by_length(partitioner_cfg: Mapping[str, Any]) -> bool:
    """Whether the partitioner partitions by the reviews' length (so it needs their texts)."""
    return partitioner_cfg.get("partition_by") == LENGTH


def takes_num_rows(target: str) -> bool:
    """Whether the partitioner `target` names sizes its partitions from the training rows (fedsim.data.partitioners)."""
    return "num_rows" in inspect.signature(get_method(target)).parameters


def partition_table(
    partitioner_cfg: dict, labels: np.ndarray, seed: int, texts: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """flwr-datasets' partitioner over the (seed-shuffled) training rows, as CSR (rows, indptr). `texts`: the
    rows' reviews, for a partitioner by their length.

    A partitioner with a minimum partition size and a seed of its own that gives up is asked again with another
    seed (`REDRAWS`): what it returns is still its own draw conditioned on the minimum, as its rejection
    sampling intends."""
    from datasets import Dataset  # the driver partitions once; actors never import datasets

    order = np.random.default_rng(seed).permutation(len(labels))
    columns = {"row": order, "label": labels[order]}
    if by_length(partitioner_cfg):
        columns[LENGTH] = np.array([len(texts[i].split()) for i in order], dtype=np.int64)
    extra = {"num_rows": len(labels)} if takes_num_rows(partitioner_cfg["_target_"]) else {}
    redraws = REDRAWS if {"seed", "min_partition_size"} <= partitioner_cfg.keys() else 1
    for attempt in range(redraws):
        cfg = (
            partitioner_cfg
            if attempt == 0
            else {**partitioner_cfg, "seed": redraw_seed(partitioner_cfg["seed"], attempt)}
        )
        partitioner = instantiate(cfg, _convert_="all", **extra)
        partitioner.dataset = Dataset.from_dict(columns)
        try:
            with warnings.catch_warnings():  # each of its short draws warns; the last failure is what counts
                warnings.filterwarnings("ignore", message="The specified min_partition_size")
                # datasets' sort (ShardPartitioner) on pyarrow >= 25: the library's call to change, not the user's
                warnings.filterwarnings("ignore", message="Specifying null_placement", category=FutureWarning)
                parts = [
                    np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)
                    for i in range(partitioner.num_partitions)
                ]
            break
        except ValueError:
            if attempt == redraws - 1:
                raise
    indptr = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=indptr[1:])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64), indptr


def partition_cached(
    partitioner_cfg: dict, labels: np.ndarray, seed: int, cache_dir: str, texts: Sequence[str] = ()
) -> str:
    """Partition once, in the driver, into a small safetensors file that client actors only read.

    Actors then never import `datasets`, and 1000 clients cost one partitioning, not one per actor. `texts`, for
    a partitioner by the reviews' length, are part of the cache's key.
    """
    settings = {"partitioner": partitioner_cfg, "seed": seed, "version": 1}
    directory = Path(os.path.expanduser(cache_dir))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"partition-{cache_key(texts, labels, settings)}.safetensors"
    if not is_intact(path):
        try:
            rows, indptr = partition_table(partitioner_cfg, labels, seed, texts)
        except ValueError as exc:  # flwr-datasets' own message, e.g. a Dirichlet split it cannot make
            raise ConfigError(
                "partition", f"{first_line(exc)} (try fewer clients, more rows, or a larger partition.alpha)"
            ) from None
        save_cached(path, {"rows": rows, "indptr": indptr})
    return str(path)


@functools.lru_cache(maxsize=2)
def _partition_arrays(path: str) -> dict[str, np.ndarray]:
    return load_file(path)


def partition_rows(partition_file: str, partition_id: int) -> np.ndarray:
    """Training-file rows held by one client, from the partition table `partition_cached` wrote."""
    table = _partition_arrays(partition_file)
    return table["rows"][table["indptr"][partition_id] : table["indptr"][partition_id + 1]]


def train_val_split(
    rows: np.ndarray, val_fraction: float, seed: int, partition_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split a client's rows into local train and validation parts, reproducibly per client."""
    shuffled = np.random.default_rng([seed, partition_id]).permutation(rows)
    num_val = int(round(len(rows) * val_fraction))
    if len(rows) > 1:
        num_val = min(max(num_val, 1 if val_fraction > 0 else 0), len(rows) - 1)
    return shuffled[num_val:], shuffled[:num_val]

"""The partition group's checks (conf/partition/): which of flwr-datasets' partitioners fit IMDB, and the
arguments that need the rest of the config to check (sizes for num_clients clients, a distribution's columns).

fedsim.config.validate runs `check_partition` with the value checks, before any data is read.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from fedsim.system.errors import ConfigError

# conf/partition/'s options that run on IMDB (docs/reference/configuration.md, "Partitioners").
FITTING = (
    "iid",
    "dirichlet",
    "pathological",
    "linear",
    "size_skew",
    "square",
    "exponential",
    "size",
    "inner_dirichlet",
    "shard",
    "distribution",
    "continuous",
)

# flwr-datasets' partitioners that do not fit a labelled text set such as IMDB: the class, and why. conf/partition/
# has an option for each, which is refused with its reason rather than being unknown.
DOES_NOT_FIT = {
    "NaturalIdPartitioner": "partitions by a natural id column (a user, a writer, a device), and IMDB's reviews "
    "carry none",
    "GroupedNaturalIdPartitioner": "groups the values of a natural id column, and IMDB's reviews carry none",
    "VerticalEvenPartitioner": "splits the columns (features) among clients, for vertical FL, and fedsim "
    "federates rows",
    "VerticalSizePartitioner": "splits the columns (features) among clients, for vertical FL, and fedsim "
    "federates rows",
}

NUM_LABELS = 2  # len(fedsim.data.imdb.CLASSES), which this layer, below fedsim.data, cannot import


def _is_sizes(value: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)


def check_partition(cfg: DictConfig) -> None:
    """Refuse a partitioner that does not fit IMDB, and arguments that cannot work with num_clients."""
    partition = cfg.partition
    name = str(partition.get("_target_", "")).rsplit(".", 1)[-1]
    if name in DOES_NOT_FIT:
        raise ConfigError("partition", f"{name} {DOES_NOT_FIT[name]}; allowed: {', '.join(FITTING)}")
    sizes = partition.get("partition_sizes")
    if sizes is not None:
        if isinstance(sizes, (str, int, float)) or not _is_sizes(sizes) or len(sizes) != cfg.num_clients:
            raise ConfigError(
                "partition.partition_sizes",
                f"got {sizes!r} for num_clients={cfg.num_clients}; allowed: null (even sizes), or a list of "
                f"{cfg.num_clients} integers >= 1, e.g. partition.partition_sizes=[100,200,700] with num_clients=3",
            )
        rows = cfg.data.get("train_size")
        if rows is not None and sum(sizes) > rows:
            raise ConfigError(
                "partition.partition_sizes",
                f"{sum(sizes)} rows in all, but data.train_size={rows}; allowed: sizes summing to at most "
                "data.train_size",
            )
    if "labels_per_client" in partition and (partition.labels_per_client * cfg.num_clients) % NUM_LABELS:
        raise ConfigError(
            "partition.labels_per_client",
            f"{partition.labels_per_client} with num_clients={cfg.num_clients}: flwr-datasets' "
            f"DistributionPartitioner shares each of IMDB's {NUM_LABELS} labels among labels_per_client * "
            f"num_clients / {NUM_LABELS} clients; allowed: 2, or an even num_clients",
        )

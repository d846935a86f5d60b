"""flwr-datasets' partitioners under fedsim's config keys, where a partitioner's own arguments cannot be written in
a config (conf/partition/): sizes that follow from the training rows, a distribution array drawn from the seed.

Each is called by `fedsim.data.partition.partition_table` through Hydra's `instantiate`; the ones that size
partitions from the training rows take `num_rows`, which partition_table passes them. The partitioners that
cannot apply to IMDB, and why, are in fedsim.config.partitions (DOES_NOT_FIT), which refuses them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr_datasets.partitioner import (
    DistributionPartitioner,
    InnerDirichletPartitioner,
    PathologicalPartitioner,
    SizePartitioner,
)

from fedsim.data.imdb import CLASSES


def even_sizes(num_rows: int, num_partitions: int) -> list[int]:
    """`num_rows` in `num_partitions` sizes that differ by at most one, the larger first."""
    share, extra = divmod(num_rows, num_partitions)
    return [share + (i < extra) for i in range(num_partitions)]


def sizes_for(partition_sizes: Sequence[int] | None, num_partitions: int, num_rows: int) -> list[int]:
    """The sizes given, or even sizes over the training rows (None). fedsim.config.partitions has checked that a
    given list has one size per client; their sum flwr-datasets checks against the rows."""
    return list(partition_sizes) if partition_sizes is not None else even_sizes(num_rows, num_partitions)


def pathological_partitioner(
    num_partitions: int, classes_per_client: int, class_assignment_mode: str = "random", seed: int = 0
) -> PathologicalPartitioner:
    """flwr-datasets' PathologicalPartitioner under the SPEC's key name `partition.classes_per_client`."""
    return PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=classes_per_client,
        class_assignment_mode=class_assignment_mode,
        seed=seed,
    )


def size_partitioner(num_partitions: int, num_rows: int, partition_sizes: Sequence[int] | None) -> SizePartitioner:
    """Client i holds `partition_sizes[i]` rows (None: even sizes over the training rows)."""
    return SizePartitioner(sizes_for(partition_sizes, num_partitions, num_rows))


def inner_dirichlet_partitioner(
    num_partitions: int,
    num_rows: int,
    alpha: float,
    partition_sizes: Sequence[int] | None = None,
    shuffle: bool = True,
    seed: int = 0,
) -> InnerDirichletPartitioner:
    """Sizes fixed first (given, or even), then each client's label mix drawn from Dirichlet(alpha) as its rows
    are filled (flwr-datasets' InnerDirichletPartitioner, after Acar et al., FedDyn, 2021)."""
    return InnerDirichletPartitioner(
        sizes_for(partition_sizes, num_partitions, num_rows), "label", alpha, shuffle=shuffle, seed=seed
    )


def distribution_partitioner(
    num_partitions: int,
    labels_per_client: int,
    sigma: float,
    preassigned_per_label: int,
    shuffle: bool = True,
    seed: int = 0,
) -> DistributionPartitioner:
    """Each client holds `labels_per_client` labels, its share of each drawn log-normally with standard deviation
    `sigma` (flwr-datasets' DistributionPartitioner, after Li et al., FedProx, 2020): the distribution array it
    takes, one row per label and labels_per_client * num_partitions / 2 columns, drawn from the seed."""
    columns = labels_per_client * num_partitions // len(CLASSES)
    array = np.random.default_rng([seed, 0xD157]).lognormal(0.0, sigma, (len(CLASSES), columns))
    return DistributionPartitioner(
        array,
        num_partitions,
        labels_per_client,
        "label",
        preassigned_per_label,
        shuffle=shuffle,
        seed=seed,
    )

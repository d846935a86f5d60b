"""The server's data step, before any client runs: read the dataset, select rows, featurize each split
into the cache, partition, and record where it all is in a small manifest keyed by the data settings.
Clients find that manifest from the run's data settings (`load_prepared`). The step reads only its typed
settings (fedsim.config.settings.DataSettings), never the config.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from hydra.utils import instantiate

from fedsim.config.settings import DataSettings
from fedsim.data.cache import _check_file, featurize_cached
from fedsim.data.features import cache_key
from fedsim.data.imdb import check_split, read_imdb, select_rows
from fedsim.data.partition import by_length, check_partitions, partition_cached
from fedsim.system.errors import ConfigError
from fedsim.system.files import write_json


@dataclass(frozen=True)
class PreparedData:
    """What clients and the server need to find the cached data: plain, picklable values."""

    train_file: str
    test_file: str
    kind: str
    num_train: int
    num_test: int
    partition_file: str  # every client's training rows, computed once by the driver
    seed: int
    val_fraction: float


def prepare_data(data: DataSettings) -> PreparedData:
    """Read, subset and featurize both splits into the cache (driver side, before Ray starts)."""
    splits = read_imdb(data.path)
    for name, split in splits.items():
        check_split(split, name, data.path)
    train_rows = select_rows(len(splits["train"].labels), data.train_size, data.seed)
    # The test subset is fixed across seeds so that runs with different seeds stay comparable.
    test_rows = select_rows(len(splits["test"].labels), data.test_size, 0)
    if data.num_clients > len(train_rows):
        raise ConfigError(
            "num_clients",
            f"{data.num_clients} clients for {len(train_rows)} training rows; use at most {len(train_rows)}",
        )
    featurizer = instantiate(data.featurizer)
    train_file = featurize_cached(splits["train"], train_rows, featurizer, data.cache_dir)
    prepared = PreparedData(
        train_file=train_file,
        test_file=featurize_cached(splits["test"], test_rows, featurizer, data.cache_dir),
        kind=featurizer.kind,
        num_train=len(train_rows),
        num_test=len(test_rows),
        partition_file=partition_cached(
            data.partition,
            splits["train"].labels[train_rows],
            data.seed,
            data.cache_dir,
            [splits["train"].texts[i] for i in train_rows] if by_length(data.partition) else (),
        ),
        seed=data.seed,
        val_fraction=data.val_fraction,
    )
    check_partitions(prepared.partition_file, prepared.val_fraction, prepared.seed, data.fraction_evaluate)
    write_json(manifest_path(data), asdict(prepared))
    return prepared


def manifest_path(data: DataSettings) -> Path:
    """Where `prepare_data` records the prepared files for these data settings."""
    settings = {
        "data": {"path": data.path, "train_size": data.train_size, "test_size": data.test_size,
                 "val_fraction": data.val_fraction},
        "seed": data.seed,
        "featurizer": data.featurizer,
        "partition": data.partition,
    }  # fmt: skip
    return Path(os.path.expanduser(data.cache_dir)) / f"prepared-{cache_key([], np.zeros(0), settings)}.json"


def client_files(data: DataSettings, prepared: PreparedData) -> list[Path]:
    """The cache files a client process reads (the manifest, the training features, the partition table,
    each with its check file): what a node that shares no filesystem with the server is sent."""
    files = [Path(prepared.train_file), Path(prepared.partition_file)]
    return [manifest_path(data), *files, *map(_check_file, files)]


def load_prepared(data: DataSettings, missing_ok: bool = False) -> PreparedData | None:
    """The prepared data of these settings, as the server recorded it before the first round (None if there
    is none and `missing_ok`: a node that brings its own data)."""
    path = manifest_path(data)
    if not path.exists():
        if missing_ok:
            return None
        raise FileNotFoundError(f"{path}: no prepared data for this config; the server prepares it before any round")
    return PreparedData(**json.loads(path.read_text()))

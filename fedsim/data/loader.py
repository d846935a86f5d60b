"""Batches for training and evaluation: `load_data` memory-loads the cache and slices a client's
partition (no tokenizing, no I/O after the first call); a SuperNode's own data; the server's test split.
"""

from __future__ import annotations

import functools
import glob
import os
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedsim.data.cache import featurize_cached, load_features
from fedsim.data.features import Features
from fedsim.data.imdb import _read_parquet_files, check_split
from fedsim.data.partition import partition_rows, train_val_split
from fedsim.data.prepare import PreparedData
from fedsim.system.errors import ConfigError


class Loader:
    """Batches of a feature table's rows; iterable like a DataLoader, reshuffled each epoch."""

    def __init__(self, features: Features, rows: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.features = features
        self.rows = rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.labels = features.labels
        self.rng = np.random.default_rng(seed)

    @property
    def num_examples(self) -> int:
        return len(self.rows)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return -(-len(self.rows) // self.batch_size)

    def __iter__(self):
        rows = self.rng.permutation(self.rows) if self.shuffle else self.rows
        for start in range(0, len(rows), self.batch_size):
            yield self.features.batch(rows[start : start + self.batch_size], self.labels)


def load_data(prepared: PreparedData, partition_id: int, batch_size: int) -> tuple[Loader, Loader]:
    """One client's train and validation loaders for its partition (no tokenizing, no I/O after the first call)."""
    features = load_features(prepared.train_file, prepared.kind)
    train_rows, val_rows = train_val_split(
        partition_rows(prepared.partition_file, partition_id), prepared.val_fraction, prepared.seed, partition_id
    )
    trainloader = Loader(features, train_rows, batch_size, shuffle=True, seed=prepared.seed)
    valloader = Loader(features, val_rows, 4 * batch_size, shuffle=False)
    return trainloader, valloader


def load_node_data(
    path: str,
    featurizer_cfg: DictConfig,
    cache_dir: str,
    seed: int,
    val_fraction: float,
    partition_id: int,
    batch_size: int,
) -> tuple[Loader, Loader]:
    """A SuperNode's own data (`--node-config data-path=DIR`): every row of the Parquet files in DIR (IMDB's
    text and label columns), split into local train and validation as a partition is, featurized once into
    the node's own cache."""
    features = _node_features(path, OmegaConf.to_yaml(featurizer_cfg, resolve=True), cache_dir)
    rows = np.arange(len(features.labels))
    train_rows, val_rows = train_val_split(rows, val_fraction, seed, partition_id)
    return (
        Loader(features, train_rows, batch_size, shuffle=True, seed=seed),
        Loader(features, val_rows, 4 * batch_size, shuffle=False),
    )


@functools.lru_cache(maxsize=1)
def _node_features(path: str, featurizer_yaml: str, cache_dir: str) -> Features:
    """A node's own rows, read, checked and featurized (through the cache) once per process."""
    files = sorted(glob.glob(str(Path(os.path.expanduser(path)) / "**" / "*.parquet"), recursive=True))
    if not files:
        raise ConfigError(
            "data-path",
            f"{path} holds no Parquet file on this node; allowed: a directory of "
            "Parquet files with 'text' and 'label' columns",
        )
    split = _read_parquet_files(files, path)
    check_split(split, "node", path)
    featurizer = instantiate(OmegaConf.create(featurizer_yaml))
    return load_features(featurize_cached(split, np.arange(len(split.labels)), featurizer, cache_dir), featurizer.kind)


def load_test(prepared: PreparedData, batch_size: int = 512) -> Loader:
    """The server's central test loader."""
    features = load_features(prepared.test_file, prepared.kind)
    return Loader(features, np.arange(prepared.num_test), batch_size, shuffle=False)

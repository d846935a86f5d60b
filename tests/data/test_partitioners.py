"""Every partitioner conf/partition/ offers, on IMDB's training labels: valid partitions (no row twice, one per
client) with the property that defines it; two of them through a whole run; and fedsim's wrappers
(fedsim.data.partitioners) against flwr-datasets' own partitioners given the same arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr_datasets.partitioner import InnerDirichletPartitioner, SizePartitioner
from helpers.configs import make_cfg
from helpers.runs import run_locally
from scipy import stats

from fedsim.config.partitions import FITTING
from fedsim.config.settings import DataSettings
from fedsim.config.validate import validate
from fedsim.data.imdb import Split, read_imdb
from fedsim.data.partition import partition_rows, partition_table, train_val_split
from fedsim.data.partitioners import even_sizes, inner_dirichlet_partitioner, size_partitioner
from fedsim.data.prepare import prepare_data

CLIENTS = 10


@pytest.fixture(scope="module")
def imdb_train(imdb_dir: Path) -> Split:
    return read_imdb(str(imdb_dir))["train"]


def partitions(split: Split, option: str, *overrides: str) -> list[np.ndarray]:
    """Each client's rows of `split` under `partition=option`, the config checked and handed over as a run does."""
    cfg = make_cfg(f"partition={option}", f"num_clients={CLIENTS}", *overrides)
    validate(cfg)
    rows, indptr = partition_table(DataSettings.of(cfg).partition, split.labels, 0, split.texts)
    return [rows[indptr[i] : indptr[i + 1]] for i in range(len(indptr) - 1)]


def sizes(parts: list[np.ndarray]) -> np.ndarray:
    return np.array([len(p) for p in parts])


def grows_as(function):
    """Client i (from 1) holds a share of the rows proportional to function(i), to within one row each."""

    def holds(parts: list[np.ndarray], split: Split) -> bool:
        weights = function(np.arange(1, CLIENTS + 1, dtype=float))
        expected = weights / weights.sum() * sizes(parts).sum()
        return bool(np.all(np.abs(sizes(parts) - expected) <= CLIENTS))

    return holds


def label_shares(parts: list[np.ndarray], split: Split) -> np.ndarray:
    return np.array([split.labels[p].mean() if len(p) else np.nan for p in parts])


def words(parts: list[np.ndarray], split: Split) -> np.ndarray:
    return np.array([np.mean([len(split.texts[i].split()) for i in p]) for p in parts])


# option -> what defines its partitions (the label skew of dirichlet and pathological: tests/data/test_data.py)
PROPERTY = {
    "iid": lambda parts, split: np.ptp(sizes(parts)) <= 1 and sizes(parts).sum() == len(split.labels),
    "dirichlet": lambda parts, split: np.ptp(label_shares(parts, split)) > 0.2,
    "pathological": lambda parts, split: all(len(np.unique(split.labels[p])) == 1 for p in parts),
    "linear": grows_as(lambda i: i),
    "size_skew": grows_as(lambda i: i),
    "square": grows_as(np.square),
    "exponential": grows_as(np.exp),
    "size": lambda parts, split: sizes(parts).tolist() == even_sizes(len(split.labels), CLIENTS),
    "inner_dirichlet": lambda parts, split: (
        sizes(parts).tolist() == even_sizes(len(split.labels), CLIENTS) and np.ptp(label_shares(parts, split)) > 0.2
    ),
    # two shards each, cut from the rows sorted by label: every client the same size, and at most one shard
    # (the one where the labels change) holds both labels, so at most two clients are not made of whole labels
    "shard": lambda parts, split: (
        np.ptp(sizes(parts)) == 0
        and sum(
            len(np.unique(split.labels[p])) > 1 and min(np.bincount(split.labels[p])) % (len(p) // 2) != 0
            for p in parts
        )
        <= 2  # fmt: skip
    ),
    # both labels each, in log-normal amounts: sizes that spread far wider than their mean
    "distribution": lambda parts, split: (
        all(set(np.unique(split.labels[p])) == {0, 1} for p in parts) and np.ptp(sizes(parts)) > sizes(parts).mean()
    ),
    "continuous": lambda parts, split: stats.spearmanr(np.arange(CLIENTS), words(parts, split)).statistic > 0.9,
}


def test_every_option_that_fits_has_its_property():
    assert sorted(PROPERTY) == sorted(FITTING)


@pytest.mark.parametrize("option", FITTING)
def test_each_partitioner_gives_every_client_rows_of_its_own_with_the_property_that_defines_it(option, imdb_train):
    parts = partitions(imdb_train, option)
    together = np.concatenate(parts)
    assert len(parts) == CLIENTS and len(np.unique(together)) == len(together)
    assert together.min() >= 0 and together.max() < len(imdb_train.labels)
    assert PROPERTY[option](parts, imdb_train), sizes(parts)


def test_no_property_but_iids_own_holds_for_iid_partitions(imdb_train):
    """The properties tell the partitioners apart (each can fail): iid's rows have none of the others', but the
    even sizes `size` gives by default."""
    parts = partitions(imdb_train, "iid")
    assert [option for option in FITTING if PROPERTY[option](parts, imdb_train)] == ["iid", "size"]


def test_size_skew_is_linear_under_its_earlier_name(imdb_train):
    assert all(np.array_equal(a, b) for a, b in zip(*(partitions(imdb_train, o) for o in ("size_skew", "linear"))))


def test_given_sizes_are_each_clients_rows(imdb_train):
    given = [100 * (i + 1) for i in range(CLIENTS)]
    parts = partitions(imdb_train, "size", f"partition.partition_sizes=[{','.join(map(str, given))}]")
    assert sizes(parts).tolist() == given


@pytest.mark.parametrize("given", [None, [50, 150, 300, 500]])
def test_the_wrappers_partition_as_flwr_datasets_given_the_same_arguments(given):
    """fedsim's wrappers only fill in arguments (even sizes, the label column): the rows are flwr-datasets'."""
    from datasets import Dataset

    labels = np.random.default_rng(1).integers(0, 2, 1000)
    ours = [size_partitioner(4, 1000, given), inner_dirichlet_partitioner(4, 1000, 0.3, given, seed=7)]
    sized = given or even_sizes(1000, 4)
    theirs = [SizePartitioner(sized), InnerDirichletPartitioner(sized, "label", 0.3, seed=7)]
    for a, b in zip(ours, theirs, strict=True):
        a.dataset = b.dataset = Dataset.from_dict({"row": np.arange(1000), "label": labels})
        for i in range(4):
            assert a.load_partition(i)["row"] == b.load_partition(i)["row"]


@pytest.mark.parametrize("option", ["shard", "continuous"])
def test_a_whole_run_trains_each_client_on_its_partition(option, imdb_dir, tmp_path):
    cfg = make_cfg(
        f"data.path={imdb_dir}",
        f"partition={option}",
        f"num_clients={CLIENTS}",
        "num_rounds=1",
        "data.train_size=2000",
        "data.test_size=200",
        "archive.mode=none",
    )
    run_locally(cfg, tmp_path)
    clients = pd.read_csv(tmp_path / "clients.csv").sort_values("client_id")
    prepared = prepare_data(DataSettings.of(cfg))  # the run's own table, read back from the cache
    held = [partition_rows(prepared.partition_file, i) for i in range(CLIENTS)]
    trains = [len(train_val_split(rows, prepared.val_fraction, prepared.seed, i)[0]) for i, rows in enumerate(held)]
    assert clients["client_id"].tolist() == list(range(CLIENTS)) and (clients["status"] == "ok").all()
    assert clients["num_examples"].tolist() == trains and clients["train_loss"].notna().all()

"""Reading IMDB, featurizing once, partitioning with flwr-datasets, and client loaders."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers.configs import make_cfg
from helpers.data import make_reviews

import fedsim.data.partition
from fedsim.config.settings import DataSettings
from fedsim.data.features import HashedNgrams
from fedsim.data.imdb import read_imdb
from fedsim.data.loader import load_data, load_test
from fedsim.data.partition import partition_rows, train_val_split
from fedsim.data.prepare import PreparedData, prepare_data
from fedsim.system.errors import ConfigError


def _prepared(generated_imdb, *overrides: str) -> PreparedData:
    return prepare_data(DataSettings.of(make_cfg(f"data.path={generated_imdb}", *overrides)))


def _label_shares(prepared: PreparedData, labels: np.ndarray, n: int) -> list[float]:
    return [labels[partition_rows(prepared.partition_file, i)].mean() for i in range(n)]


def test_iid_partitions_cover_the_rows_once_with_equal_sizes(generated_imdb):
    prepared = _prepared(generated_imdb, "num_clients=7")
    parts = [partition_rows(prepared.partition_file, i) for i in range(7)]
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sorted(np.concatenate(parts).tolist()) == list(range(1200))
    labels = make_reviews(1200, 0).label.to_numpy()
    assert all(0.3 < s < 0.7 for s in _label_shares(prepared, labels, 7))  # shuffled before sharding


def test_dirichlet_with_small_alpha_is_label_skewed(generated_imdb):
    labels = make_reviews(1200, 0).label.to_numpy()
    skewed = _label_shares(
        _prepared(generated_imdb, "num_clients=6", "partition=dirichlet", "partition.alpha=0.1"), labels, 6
    )
    iid = _label_shares(_prepared(generated_imdb, "num_clients=6"), labels, 6)
    assert np.std(skewed) > 0.25 > np.std(iid)


def test_pathological_gives_each_client_one_class(generated_imdb):
    prepared = _prepared(generated_imdb, "num_clients=4", "partition=pathological")
    labels = make_reviews(1200, 0).label.to_numpy()
    assert all(len(np.unique(labels[partition_rows(prepared.partition_file, i)])) == 1 for i in range(4))


def test_size_skew_gives_growing_partitions(generated_imdb):
    prepared = _prepared(generated_imdb, "num_clients=4", "partition=size_skew")
    sizes = [len(partition_rows(prepared.partition_file, i)) for i in range(4)]
    assert sizes == sorted(sizes) and sizes[-1] >= 3 * sizes[0]


def test_partitions_are_stable_for_a_seed_and_change_with_it(generated_imdb):
    a = partition_rows(_prepared(generated_imdb, "num_clients=5", "partition=dirichlet", "seed=3").partition_file, 2)
    b = partition_rows(_prepared(generated_imdb, "num_clients=5", "partition=dirichlet", "seed=3").partition_file, 2)
    c = partition_rows(_prepared(generated_imdb, "num_clients=5", "partition=dirichlet", "seed=4").partition_file, 2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_train_val_split_is_disjoint_and_sized():
    train, val = train_val_split(np.arange(100), 0.2, seed=0, partition_id=3)
    assert len(val) == 20 and len(train) == 80 and not set(train) & set(val)


def test_loaders_batch_the_partition(generated_imdb):
    prepared = _prepared(generated_imdb, "num_clients=3", "data.train_size=600", "data.test_size=100")
    trainloader, valloader = load_data(prepared, 1, batch_size=32)
    assert trainloader.num_examples + valloader.num_examples == 200
    batch = next(iter(trainloader))
    assert set(batch) == {"input", "offsets", "labels"} and len(batch["labels"]) == 32
    assert sum(len(b["labels"]) for b in valloader) == valloader.num_examples
    assert load_test(prepared).num_examples == 100


def test_featurized_splits_are_cached_by_content(generated_imdb, monkeypatch):
    first = _prepared(generated_imdb, "num_clients=2")
    with monkeypatch.context() as patched:  # a cache hit featurizes nothing
        patched.setattr(HashedNgrams, "__call__", lambda *a: pytest.fail("featurized again"))
        second = _prepared(generated_imdb, "num_clients=2", "seed=5")  # same rows, other seed: same cache
    assert second.train_file == first.train_file
    smaller = _prepared(generated_imdb, "num_clients=2", "data.train_size=100")
    assert smaller.train_file != first.train_file


def test_reads_an_aclimdb_tree(tmp_path):
    for split in ("train", "test"):
        for label in ("pos", "neg"):
            (tmp_path / "aclImdb" / split / label).mkdir(parents=True)
            (tmp_path / "aclImdb" / split / label / "0_7.txt").write_text(f"a {label} review")
    splits = read_imdb(str(tmp_path))
    assert splits["train"].texts == ["a neg review", "a pos review"]
    assert splits["test"].labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    "path, message",
    [
        ("/nonexistent", "no such directory"),
        ("./not/here", "no such directory"),
    ],
)
def test_bad_paths_name_the_key(path, message):
    with pytest.raises(ConfigError, match=message) as err:
        read_imdb(path)
    assert err.value.key == "data.path"


def test_missing_columns_are_refused(tmp_path):
    make_reviews(10, 0).rename(columns={"label": "sentiment"}).to_parquet(tmp_path / "train.parquet")
    make_reviews(10, 0).to_parquet(tmp_path / "test.parquet")
    with pytest.raises(ConfigError, match="label"):
        read_imdb(str(tmp_path))


def test_more_clients_than_rows_is_refused(generated_imdb):
    with pytest.raises(ConfigError, match="num_clients"):
        _prepared(generated_imdb, "num_clients=50", "data.train_size=20")


def test_a_partition_flwr_datasets_cannot_make_is_one_config_error(generated_imdb):
    with pytest.raises(ConfigError, match=r"^partition: .*partition.alpha"):
        _prepared(
            generated_imdb,
            "num_clients=50",
            "data.train_size=60",
            "partition=dirichlet",
            "partition.alpha=0.01",
            "partition.min_partition_size=2",
        )


def test_partition_is_cached_once_for_every_actor(generated_imdb, monkeypatch):
    prepared = _prepared(generated_imdb, "num_clients=4", "seed=11")
    assert prepared.partition_file.endswith(".safetensors") and os.path.exists(prepared.partition_file)
    with monkeypatch.context() as patched:  # every later use reads the table; none partitions again
        patched.setattr(fedsim.data.partition, "partition_table", lambda *a: pytest.fail("partitioned again"))
        again = _prepared(generated_imdb, "num_clients=4", "seed=11")
    assert again.partition_file == prepared.partition_file
    rows = np.concatenate([partition_rows(prepared.partition_file, i) for i in range(4)])
    assert sorted(rows.tolist()) == list(range(prepared.num_train))


@pytest.mark.parametrize("damage", ["truncate", "flip a byte"])
@pytest.mark.parametrize("which", ["train_file", "partition_file"])
def test_a_damaged_cache_file_is_detected_named_and_rebuilt(generated_imdb, tmp_path, capsys, damage, which):
    cfg = make_cfg(
        f"data.path={generated_imdb}",
        "num_clients=4",
        "data.train_size=300",
        "data.test_size=50",
        f"data.cache_dir={tmp_path}",
    )
    path = getattr(prepare_data(DataSettings.of(cfg)), which)
    good = open(path, "rb").read()
    with open(path, "r+b") as f:
        if damage == "truncate":
            f.truncate(len(good) // 2)
        else:
            f.seek(len(good) - 10)
            f.write(bytes([good[-10] ^ 0xFF]))
    capsys.readouterr()
    rebuilt = prepare_data(DataSettings.of(cfg))
    assert f"cache: {path} is damaged" in capsys.readouterr().out
    assert getattr(rebuilt, which) == path and open(path, "rb").read() == good

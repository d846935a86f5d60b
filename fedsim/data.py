"""IMDB for federated clients: load the texts, featurize each split once, partition, and batch.

The server calls `prepare_data` before any client runs: it reads the dataset, selects rows,
writes each featurized split to a content-keyed safetensors cache, and records where they are
in a small manifest keyed by the data settings. Clients find that manifest from the run's config
(`load_prepared`), then `load_data` only memory-loads the cache and slices their partition.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.numpy import load_file, save_file

from fedsim.errors import ConfigError, first_line
from fedsim.features import FEATURE_TYPES, Features, cache_key
from fedsim.outputs import write_json

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
CLASSES = (0, 1)  # negative, positive


@dataclass(frozen=True)
class Split:
    """Raw texts and labels of one split."""

    texts: list[str]
    labels: np.ndarray


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


def read_imdb(path: str) -> dict[str, Split]:
    """Read the train and test splits from a Parquet directory, an aclImdb tree, or the Hub."""
    local = Path(os.path.expanduser(path))
    if local.is_dir():
        if glob.glob(str(local / "**" / "*.parquet"), recursive=True):
            return _read_parquet_dir(local)
        for root in (local, local / "aclImdb"):
            if (root / "train" / "pos").is_dir():
                return _read_aclimdb(root)
        raise ConfigError(
            "data.path", f"{path} holds neither Parquet files (train/test) nor an aclImdb/ tree"
        )
    if local.exists() or path.startswith((".", "/", "~")) or not HUB_ID.match(path):
        raise ConfigError(
            "data.path",
            f"{path}: no such directory (give a directory of Parquet files, an aclImdb/ tree, "
            "or a Hub dataset id such as stanfordnlp/imdb)",
        )
    return _read_hub(path)


def _check_columns(columns: list[str], where: str) -> None:
    missing = {"text", "label"} - set(columns)
    if missing:
        raise ConfigError(
            "data.path", f"{where} lacks column(s) {sorted(missing)}; expected 'text' and 'label'"
        )


def _read_parquet_dir(root: Path) -> dict[str, Split]:
    splits = {}
    for split in ("train", "test"):
        files = sorted(glob.glob(str(root / "**" / f"{split}*.parquet"), recursive=True))
        if not files:
            raise ConfigError("data.path", f"{root} has no {split}*.parquet file")
        splits[split] = _read_parquet_files(files, f"{split} split of {root}")
    return splits


def _read_parquet_files(files: list[str], where: str) -> Split:
    import pyarrow.parquet as pq

    tables = [pq.read_table(f) for f in files]
    _check_columns(tables[0].column_names, files[0])
    texts = [t for table in tables for t in table.column("text").to_pylist()]
    labels = np.concatenate([np.asarray(table.column("label").to_numpy(zero_copy_only=False)) for table in tables])
    return Split(texts, _labels(labels, where))


def _number(value: object) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _labels(values: np.ndarray, where: str) -> np.ndarray:
    """Labels as integers; a missing or non-integer label is bad input, named with its count."""
    labels = values.astype(np.float64) if values.dtype.kind in "iuf" else np.array([_number(v) for v in values])
    bad = int((np.isnan(labels) | (labels != np.round(labels))).sum())
    if bad:
        raise ConfigError("data.path", f"{bad} rows of the {where} have no integer label; allowed: {list(CLASSES)}")
    return labels.astype(np.int64)


def _read_aclimdb(root: Path) -> dict[str, Split]:
    splits = {}
    for split in ("train", "test"):
        texts, labels = [], []
        for label, name in enumerate(("neg", "pos")):
            for file in sorted((root / split / name).glob("*.txt")):
                texts.append(file.read_text(encoding="utf-8"))
                labels.append(label)
        splits[split] = Split(texts, np.asarray(labels, dtype=np.int64))
    return splits


def offline_unless_hub_reachable(timeout: float = 3.0) -> None:
    """Before loading from the Hub: if huggingface.co does not answer at all, put Hugging Face's loaders
    offline (their cache only), instead of half a minute of retries with a warning per try."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"


def _read_hub(dataset_id: str) -> dict[str, Split]:
    offline_unless_hub_reachable()
    from datasets import load_dataset

    try:
        dataset = load_dataset(dataset_id)
    except Exception as exc:  # the Hub's errors vary by cause (offline, missing, gated)
        raise ConfigError("data.path", f"could not load '{dataset_id}' from the Hugging Face Hub ({first_line(exc)}); "
                          "allowed: a reachable Hub id, or a local copy given as data.path=DIR or IMDB_PATH=DIR "
                          "(Parquet train/test files or an aclImdb/ tree)") from None
    splits = {}
    for split in ("train", "test"):
        if split not in dataset:
            raise ConfigError("data.path", f"Hub dataset '{dataset_id}' has no '{split}' split")
        _check_columns(dataset[split].column_names, f"Hub dataset '{dataset_id}'")
        splits[split] = Split(list(dataset[split]["text"]),
                              _labels(np.asarray(dataset[split]["label"], dtype=object), f"Hub dataset '{dataset_id}'"))
    return splits


def check_split(split: Split, name: str, source: str) -> None:
    """Refuse a split that cannot be trained on as it is: a row without text, or a label that is no class.

    The rule is to refuse, never to drop silently: the user's data is what the run claims to use.
    """
    bad_text = sum(not isinstance(t, str) or not t.strip() for t in split.texts)
    if bad_text:
        raise ConfigError("data.path", f"{bad_text} of {len(split.texts)} {name} rows in {source} have no text "
                          "(null, empty or not a string); allowed: a non-empty string in every row")
    labels, counts = np.unique(split.labels, return_counts=True)
    unknown = {int(label): int(count) for label, count in zip(labels, counts) if label not in CLASSES}
    if unknown:
        raise ConfigError("data.path", f"{sum(unknown.values())} {name} rows in {source} have labels "
                          f"{sorted(unknown)[:5]} outside IMDB's classes; allowed: {list(CLASSES)}")


def select_rows(num_rows: int, cap: int | None, seed: int) -> np.ndarray:
    """Sorted row ids of a random subset of `cap` rows (all rows when cap is None)."""
    if cap is None or cap >= num_rows:
        return np.arange(num_rows)
    return np.sort(np.random.default_rng(seed).permutation(num_rows)[:cap])


def sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            sha.update(chunk)
    return sha.hexdigest()


def _check_file(path: Path) -> Path:
    return path.with_name(path.name + ".check.json")


def save_cached(path: Path, arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write a cache file atomically, with its size and SHA-256 beside it for `is_intact`."""
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_file(arrays, str(tmp), metadata=metadata)
    write_json(_check_file(path), {"bytes": tmp.stat().st_size, "sha256": sha256_of(tmp)})
    os.replace(tmp, path)


def is_intact(path: Path) -> bool:
    """Whether a cache file exists and is exactly as written; a damaged one is reported and rebuilt."""
    if not path.exists():
        return False
    check = _check_file(path)
    expected = json.loads(check.read_text()) if check.exists() else None
    if expected and path.stat().st_size == expected["bytes"] and sha256_of(path) == expected["sha256"]:
        return True
    print(f"cache: {path} is {'damaged' if expected else 'unverified'} (size or SHA-256 differs); rebuilding it")
    return False


def featurize_cached(split: Split, rows: np.ndarray, featurizer, cache_dir: str) -> str:
    """Featurize the chosen rows once; return the cache file (reused when content and settings match)."""
    texts = [split.texts[i] for i in rows]
    labels = split.labels[rows]
    settings = featurizer.settings()
    directory = Path(os.path.expanduser(cache_dir))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{settings['kind']}-{cache_key(texts, labels, settings)}.safetensors"
    if not is_intact(path):
        save_cached(path, featurizer(texts, labels).arrays(), metadata={"settings": json.dumps(settings)})
    return str(path)


def prepare_data(cfg: DictConfig) -> PreparedData:
    """Read, subset and featurize both splits into the cache (driver side, before Ray starts)."""
    splits = read_imdb(str(cfg.data.path))
    for name, split in splits.items():
        check_split(split, name, str(cfg.data.path))
    train_rows = select_rows(len(splits["train"].labels), cfg.data.train_size, cfg.seed)
    # The test subset is fixed across seeds so that runs with different seeds stay comparable.
    test_rows = select_rows(len(splits["test"].labels), cfg.data.test_size, 0)
    if cfg.num_clients > len(train_rows):
        raise ConfigError(
            "num_clients", f"{cfg.num_clients} clients for {len(train_rows)} training rows; use at most {len(train_rows)}"
        )
    featurizer = instantiate(cfg.model.featurizer)
    train_file = featurize_cached(splits["train"], train_rows, featurizer, cfg.data.cache_dir)
    partitioner = OmegaConf.to_container(cfg.partition, resolve=True)
    prepared = PreparedData(
        train_file=train_file,
        test_file=featurize_cached(splits["test"], test_rows, featurizer, cfg.data.cache_dir),
        kind=featurizer.kind,
        num_train=len(train_rows),
        num_test=len(test_rows),
        partition_file=partition_cached(partitioner, splits["train"].labels[train_rows], int(cfg.seed),
                                        cfg.data.cache_dir),
        seed=int(cfg.seed),
        val_fraction=float(cfg.data.val_fraction),
    )
    check_partitions(prepared, float(cfg.strategy.get("fraction_evaluate", 0)) if "strategy" in cfg else 0.0)
    write_json(manifest_path(cfg), asdict(prepared))
    return prepared


def check_partitions(prepared: PreparedData, fraction_evaluate: float) -> None:
    """Refuse partitions that leave a client nothing to train on, or (when clients evaluate) nothing to evaluate."""
    sizes = np.diff(_partition_arrays(prepared.partition_file)["indptr"])
    for client_id, size in enumerate(sizes):
        _, val_rows = train_val_split(np.arange(size), prepared.val_fraction, prepared.seed, client_id)
        if size < 1 or (fraction_evaluate > 0 and len(val_rows) == 0) or size - len(val_rows) < 1:
            raise ConfigError("data.val_fraction", f"client {client_id} holds {size} rows, {len(val_rows)} of them "
                              f"for validation at data.val_fraction={prepared.val_fraction}: nothing left to "
                              f"{'train on' if size - len(val_rows) < 1 else 'evaluate'}; allowed: partitions "
                              "of at least 2 rows (more data.train_size, fewer num_clients, another partition)")


def manifest_path(cfg: DictConfig) -> Path:
    """Where `prepare_data` records the prepared files for this config's data settings."""
    settings = {
        "data": {key: cfg.data[key] for key in ("path", "train_size", "test_size", "val_fraction")},
        "seed": cfg.seed,
        "featurizer": OmegaConf.to_container(cfg.model.featurizer, resolve=True),
        "partition": OmegaConf.to_container(cfg.partition, resolve=True),
    }
    return Path(os.path.expanduser(cfg.data.cache_dir)) / f"prepared-{cache_key([], np.zeros(0), settings)}.json"


def client_files(cfg: DictConfig, prepared: PreparedData) -> list[Path]:
    """The cache files a client process reads (the manifest, the training features, the partition table,
    each with its check file): what a node that shares no filesystem with the server is sent."""
    data = [Path(prepared.train_file), Path(prepared.partition_file)]
    return [manifest_path(cfg), *data, *map(_check_file, data)]


def load_prepared(cfg: DictConfig, missing_ok: bool = False) -> PreparedData | None:
    """The prepared data of this config, as the server recorded it before the first round (None if there
    is none and `missing_ok`: a node that brings its own data)."""
    path = manifest_path(cfg)
    if not path.exists():
        if missing_ok:
            return None
        raise FileNotFoundError(f"{path}: no prepared data for this config; the server prepares it before any round")
    return PreparedData(**json.loads(path.read_text()))


@functools.lru_cache(maxsize=4)
def load_features(path: str, kind: str) -> Features:
    """Memory-load a cached split, once per process (a client actor serves many clients)."""
    return FEATURE_TYPES[kind](**load_file(path))


def pathological_partitioner(num_partitions: int, classes_per_client: int, class_assignment_mode: str = "random",
                             seed: int = 0):
    """flwr-datasets' PathologicalPartitioner under the SPEC's key name `partition.classes_per_client`."""
    from flwr_datasets.partitioner import PathologicalPartitioner

    return PathologicalPartitioner(num_partitions=num_partitions, partition_by="label",
                                   num_classes_per_partition=classes_per_client,
                                   class_assignment_mode=class_assignment_mode, seed=seed)


def partition_table(partitioner_cfg: dict, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """flwr-datasets' partitioner over the (seed-shuffled) training rows, as CSR (rows, indptr)."""
    from datasets import Dataset

    order = np.random.default_rng(seed).permutation(len(labels))
    partitioner = instantiate(partitioner_cfg, _convert_="all")
    partitioner.dataset = Dataset.from_dict({"row": order, "label": labels[order]})
    parts = [np.asarray(partitioner.load_partition(i)["row"], dtype=np.int64)
             for i in range(partitioner.num_partitions)]
    indptr = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(p) for p in parts], out=indptr[1:])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64), indptr


def partition_cached(partitioner_cfg: dict, labels: np.ndarray, seed: int, cache_dir: str) -> str:
    """Partition once, in the driver, into a small safetensors file that client actors only read.

    Actors then never import `datasets`, and 1000 clients cost one partitioning, not one per actor.
    """
    settings = {"partitioner": partitioner_cfg, "seed": seed, "version": 1}
    directory = Path(os.path.expanduser(cache_dir))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"partition-{cache_key([], labels, settings)}.safetensors"
    if not is_intact(path):
        try:
            rows, indptr = partition_table(partitioner_cfg, labels, seed)
        except ValueError as exc:  # flwr-datasets' own message, e.g. a Dirichlet split it cannot make
            raise ConfigError("partition", f"{first_line(exc)} (try fewer clients, more rows, or a larger "
                              "partition.alpha)") from None
        save_cached(path, {"rows": rows, "indptr": indptr})
    return str(path)


@functools.lru_cache(maxsize=2)
def _partition_arrays(path: str) -> dict[str, np.ndarray]:
    return load_file(path)


def partition_rows(prepared: PreparedData, partition_id: int) -> np.ndarray:
    """Training-file rows held by one client."""
    table = _partition_arrays(prepared.partition_file)
    return table["rows"][table["indptr"][partition_id] : table["indptr"][partition_id + 1]]


def train_val_split(rows: np.ndarray, val_fraction: float, seed: int, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a client's rows into local train and validation parts, reproducibly per client."""
    shuffled = np.random.default_rng([seed, partition_id]).permutation(rows)
    num_val = int(round(len(rows) * val_fraction))
    if len(rows) > 1:
        num_val = min(max(num_val, 1 if val_fraction > 0 else 0), len(rows) - 1)
    return shuffled[num_val:], shuffled[:num_val]


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
        partition_rows(prepared, partition_id), prepared.val_fraction, prepared.seed, partition_id
    )
    trainloader = Loader(features, train_rows, batch_size, shuffle=True, seed=prepared.seed)
    valloader = Loader(features, val_rows, 4 * batch_size, shuffle=False)
    return trainloader, valloader


def load_node_data(path: str, featurizer_cfg: DictConfig, cache_dir: str, seed: int, val_fraction: float,
                   partition_id: int, batch_size: int) -> tuple[Loader, Loader]:
    """A SuperNode's own data (`--node-config data-path=DIR`): every row of the Parquet files in DIR (IMDB's
    text and label columns), split into local train and validation as a partition is, featurized once into
    the node's own cache."""
    features = _node_features(path, OmegaConf.to_yaml(featurizer_cfg, resolve=True), cache_dir)
    rows = np.arange(len(features.labels))
    train_rows, val_rows = train_val_split(rows, val_fraction, seed, partition_id)
    return (Loader(features, train_rows, batch_size, shuffle=True, seed=seed),
            Loader(features, val_rows, 4 * batch_size, shuffle=False))


@functools.lru_cache(maxsize=1)
def _node_features(path: str, featurizer_yaml: str, cache_dir: str) -> Features:
    """A node's own rows, read, checked and featurized (through the cache) once per process."""
    files = sorted(glob.glob(str(Path(os.path.expanduser(path)) / "**" / "*.parquet"), recursive=True))
    if not files:
        raise ConfigError("data-path", f"{path} holds no Parquet file on this node; allowed: a directory of "
                          "Parquet files with 'text' and 'label' columns")
    split = _read_parquet_files(files, path)
    check_split(split, "node", path)
    featurizer = instantiate(OmegaConf.create(featurizer_yaml))
    return load_features(featurize_cached(split, np.arange(len(split.labels)), featurizer, cache_dir), featurizer.kind)


def load_test(prepared: PreparedData, batch_size: int = 512) -> Loader:
    """The server's central test loader."""
    features = load_features(prepared.test_file, prepared.kind)
    return Loader(features, np.arange(prepared.num_test), batch_size, shuffle=False)


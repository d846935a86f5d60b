"""IMDB's texts and labels from a Parquet directory, an aclImdb/ tree or the Hugging Face Hub, checked
before anything is trained on them.
"""

from __future__ import annotations

import functools
import glob
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.system.errors import ConfigError, first_line

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


CLASSES = (0, 1)  # negative, positive


@dataclass(frozen=True)
class Split:
    """Raw texts and labels of one split."""

    texts: list[str]
    labels: np.ndarray


def read_imdb(path: str) -> dict[str, Split]:
    """Read the train and test splits from a Parquet directory, an aclImdb tree, or the Hub."""
    local = Path(os.path.expanduser(path))
    if local.is_dir():
        if glob.glob(str(local / "**" / "*.parquet"), recursive=True):
            return _read_parquet_dir(local)
        for root in (local, local / "aclImdb"):
            if (root / "train" / "pos").is_dir():
                return _read_aclimdb(root)
        raise ConfigError("data.path", f"{path} holds neither Parquet files (train/test) nor an aclImdb/ tree")
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
        raise ConfigError("data.path", f"{where} lacks column(s) {sorted(missing)}; expected 'text' and 'label'")


def _read_parquet_dir(root: Path) -> dict[str, Split]:
    splits = {}
    for split in ("train", "test"):
        files = sorted(glob.glob(str(root / "**" / f"{split}*.parquet"), recursive=True))
        if not files:
            raise ConfigError("data.path", f"{root} has no {split}*.parquet file")
        splits[split] = _read_parquet_files(files, f"{split} split of {root}")
    return splits


def _read_parquet_files(files: list[str], where: str) -> Split:
    stamps = tuple((os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files)
    return _parquet_split(tuple(files), stamps, where)


@functools.lru_cache(maxsize=2)
def _parquet_split(files: tuple[str, ...], stamps: tuple[tuple[int, int], ...], where: str) -> Split:
    """The files' rows, read once per process while they are unchanged (`stamps`: each file's mtime and size): a
    collection's runner makes run after run on the same IMDB. The labels are read-only, as every reader treats
    them."""
    import pyarrow.parquet as pq  # only to read IMDB: client processes import this module and read the cache

    tables = [pq.read_table(f) for f in files]
    _check_columns(tables[0].column_names, files[0])
    texts = [t for table in tables for t in table.column("text").to_pylist()]
    labels = np.concatenate([np.asarray(table.column("label").to_numpy(zero_copy_only=False)) for table in tables])
    split = Split(texts, _labels(labels, where))
    split.labels.setflags(write=False)
    return split


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
    offline (their cache only), instead of a long series of retries with a warning per try."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
    except OSError:
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"


def _read_hub(dataset_id: str) -> dict[str, Split]:
    offline_unless_hub_reachable()
    from datasets import load_dataset  # only to read IMDB from the Hub: client processes read the cache

    try:
        dataset = load_dataset(dataset_id)
    except Exception as exc:  # the Hub's errors vary by cause (offline, missing, gated)
        raise ConfigError(
            "data.path",
            f"could not load '{dataset_id}' from the Hugging Face Hub ({first_line(exc)}); "
            "allowed: a reachable Hub id, or a local copy given as data.path=DIR or IMDB_PATH=DIR "
            "(Parquet train/test files or an aclImdb/ tree)",
        ) from None
    splits = {}
    for split in ("train", "test"):
        if split not in dataset:
            raise ConfigError("data.path", f"Hub dataset '{dataset_id}' has no '{split}' split")
        _check_columns(dataset[split].column_names, f"Hub dataset '{dataset_id}'")
        splits[split] = Split(
            list(dataset[split]["text"]),
            _labels(np.asarray(dataset[split]["label"], dtype=object), f"Hub dataset '{dataset_id}'"),
        )
    return splits


def check_split(split: Split, name: str, source: str) -> None:
    """Refuse a split that cannot be trained on as it is: a row without text, or a label that is no class.

    The rule is to refuse, never to drop silently: the user's data is what the run claims to use.
    """
    bad_text = sum(not isinstance(t, str) or not t.strip() for t in split.texts)
    if bad_text:
        raise ConfigError(
            "data.path",
            f"{bad_text} of {len(split.texts)} {name} rows in {source} have no text "
            "(null, empty or not a string); allowed: a non-empty string in every row",
        )
    labels, counts = np.unique(split.labels, return_counts=True)
    unknown = {int(label): int(count) for label, count in zip(labels, counts) if label not in CLASSES}
    if unknown:
        raise ConfigError(
            "data.path",
            f"{sum(unknown.values())} {name} rows in {source} have labels "
            f"{sorted(unknown)[:5]} outside IMDB's classes; allowed: {list(CLASSES)}",
        )


def select_rows(num_rows: int, cap: int | None, seed: int) -> np.ndarray:
    """Sorted row ids of a random subset of `cap` rows (all rows when cap is None)."""
    if cap is None or cap >= num_rows:
        return np.arange(num_rows)
    return np.sort(np.random.default_rng(seed).permutation(num_rows)[:cap])

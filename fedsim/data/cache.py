"""The featurization cache: each file written atomically with its size and SHA-256 beside it, checked on
every use, and named by its content, so a split is featurized once and only memory-loaded afterwards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from fedsim.data.features import FEATURE_TYPES, Features, cache_key
from fedsim.data.imdb import Split
from fedsim.system.files import replaced, write_json


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
    with replaced(path) as tmp:
        save_file(arrays, str(tmp), metadata=metadata)
        write_json(_check_file(path), {"bytes": tmp.stat().st_size, "sha256": sha256_of(tmp)})


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


@functools.lru_cache(maxsize=4)
def load_features(path: str, kind: str) -> Features:
    """Memory-load a cached split, once per process (a client actor serves many clients)."""
    return FEATURE_TYPES[kind](**load_file(path))

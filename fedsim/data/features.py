"""Turning review texts into model inputs: hashed n-grams for `bow`, token ids for transformers.

Each featurizer produces a `Features` object that can be stored as one safetensors file, so a
split is featurized once (per content and settings) and only memory-loaded afterwards.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


class Features(Protocol):
    """Featurized rows of one split; `batch` turns row indices into model inputs."""

    labels: np.ndarray

    def batch(self, rows: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]: ...

    def arrays(self) -> dict[str, np.ndarray]: ...


@dataclass
class NgramFeatures:
    """Rows as CSR lists of hashed n-gram ids, fed to `nn.EmbeddingBag` with offsets."""

    indptr: np.ndarray
    indices: np.ndarray
    labels: np.ndarray

    def batch(self, rows: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        offsets = np.zeros(len(rows), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        ids = np.concatenate([self.indices[s:e] for s, e in zip(starts, ends)])
        return {
            "input": torch.from_numpy(ids.astype(np.int64)),
            "offsets": torch.from_numpy(offsets),
            "labels": torch.from_numpy(labels[rows].astype(np.int64)),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {"indptr": self.indptr, "indices": self.indices, "labels": self.labels}


@dataclass
class TokenFeatures:
    """Rows as token ids padded to max_length; batches are cut to their longest row."""

    input_ids: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray

    def batch(self, rows: np.ndarray, labels: np.ndarray) -> dict[str, torch.Tensor]:
        width = int(self.lengths[rows].max())
        ids = torch.from_numpy(self.input_ids[rows, :width].astype(np.int64))
        mask = torch.arange(width)[None, :] < torch.from_numpy(self.lengths[rows].astype(np.int64))[:, None]
        return {
            "input_ids": ids,
            "attention_mask": mask.long(),
            "labels": torch.from_numpy(labels[rows].astype(np.int64)),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "lengths": self.lengths, "labels": self.labels}


FEATURE_TYPES = {"ngrams": NgramFeatures, "tokens": TokenFeatures}


class HashedNgrams:
    """Unigrams and bigrams hashed into `num_buckets` ids: no vocabulary is fitted to any data."""

    kind = "ngrams"

    def __init__(self, num_buckets: int) -> None:
        self.num_buckets = num_buckets

    def settings(self) -> dict:
        return {"kind": self.kind, "num_buckets": self.num_buckets, "ngrams": [1, 2], "version": 1}

    def __call__(self, texts: Sequence[str], labels: np.ndarray) -> NgramFeatures:
        from sklearn.feature_extraction.text import HashingVectorizer  # only to featurize: clients read the cache

        vectorizer = HashingVectorizer(
            n_features=self.num_buckets,
            ngram_range=(1, 2),
            alternate_sign=False,
            norm=None,
            binary=True,
            preprocessor=_clean,
        )
        csr = vectorizer.transform(texts)
        csr.sort_indices()
        return NgramFeatures(csr.indptr.astype(np.int64), csr.indices.astype(np.int32), labels)


class Tokenized:
    """A Hugging Face tokenizer's ids, truncated to `max_length`."""

    kind = "tokens"

    def __init__(self, name: str, max_length: int) -> None:
        self.name = name
        self.max_length = max_length

    def settings(self) -> dict:
        return {"kind": self.kind, "tokenizer": self.name, "max_length": self.max_length, "version": 1}

    def __call__(self, texts: Sequence[str], labels: np.ndarray) -> TokenFeatures:
        from transformers import AutoTokenizer  # only to featurize: clients read the cache

        tokenizer = AutoTokenizer.from_pretrained(self.name)
        ids = np.full((len(texts), self.max_length), tokenizer.pad_token_id or 0, dtype=np.int32)
        lengths = np.zeros(len(texts), dtype=np.int32)
        for start in range(0, len(texts), 1000):
            chunk = [_strip_markup(t) for t in texts[start : start + 1000]]
            encoded = tokenizer(chunk, truncation=True, max_length=self.max_length)["input_ids"]
            for i, row in enumerate(encoded, start):
                ids[i, : len(row)] = row
                lengths[i] = len(row)
        return TokenFeatures(ids, lengths, labels)


def _strip_markup(text: str) -> str:
    return text.replace("<br />", " ")


def _clean(text: str) -> str:
    return _strip_markup(text).lower()


def cache_key(texts: Sequence[str], labels: np.ndarray, settings: dict) -> str:
    """A key from the rows' content and the featurizer's settings, so stale caches never match."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()[:32]

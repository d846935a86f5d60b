"""Training only the embedding rows a client's data indexes: the bag-of-n-grams client's fast path.

A bow client with twenty reviews indexes a few thousand of its embedding's 262,144 rows, yet training the
whole model pays for all of them in every step: loading the global weights into the model, Adam's update
and state over 4.2M weights, and copying them all out again. Every row the data never indexes gets a zero
gradient in every step, and from a fresh optimizer Adam's update of a zero gradient is exactly zero, as is
the proximal step of a row still equal to its anchor. So `loaded` trains a copy of just the indexed rows
(the batches' ids renumbered into that copy), and the rows written back over the global weights are bitwise
the weights whole-model training gives, elementwise operation for elementwise operation
(tests/model/test_indexed_rows.py compares them for FedAvg and FedProx, over epochs and batches).

A model without an `nn.EmbeddingBag` named `embedding` (the transformers) trains whole, through the same
context, so a client has one training path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedsim.data.features import NgramFeatures
from fedsim.data.loader import Loader
from fedsim.model.weights import get_weights, set_weights

Batch = dict[str, torch.Tensor]


def indexed_rows(loader: Loader, num_rows: int) -> np.ndarray:
    """The rows of a `num_rows`-row embedding that the loader's batches index, in increasing order: marked in
    a mask, linear in the ids (sorting them, as `np.unique` does, took a sixth of a client's training time)."""
    if not len(loader.rows):
        return np.zeros(0, np.int64)
    indexed = np.zeros(num_rows, bool)
    indexed[loader.features.batch(loader.rows, loader.labels)["input"].numpy()] = True
    return np.flatnonzero(indexed)


class Renumbered:
    """A loader's batches with each embedding id replaced by its position among `rows` (which holds them all),
    read from a table of every id's position: a lookup per id, where a binary search took a tenth of a
    client's training time."""

    def __init__(self, loader: Iterable[Batch], rows: np.ndarray, num_rows: int) -> None:
        self.loader = loader
        position = np.zeros(num_rows, np.int64)
        position[rows] = np.arange(len(rows))
        self.position = torch.from_numpy(position)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield {**batch, "input": self.position[batch["input"]]}


@dataclass(frozen=True)
class Trained:
    """A client's trained weights, in state_dict order, as training left them.

    For a bag of n-grams, `weights[position]` holds only the embedding rows the client's data indexes (`rows`,
    increasing); every other row is still the sent model's, bitwise. A sparse reply needs just those rows
    (fedsim.messages.sparse.sparse_update), so they are never written into a dense copy unless one is asked for.
    """

    weights: list[np.ndarray]
    sent: Sequence[np.ndarray]
    position: int | None = None
    rows: np.ndarray | None = None

    def dense(self) -> list[np.ndarray]:
        """Every tensor whole: the sent embedding with the indexed rows replaced."""
        if self.position is None or self.rows is None:
            return self.weights
        values = self.weights[self.position]
        dense = np.array(self.sent[self.position], dtype=values.dtype, copy=True)
        dense[self.rows] = values
        return [dense if i == self.position else w for i, w in enumerate(self.weights)]


@contextlib.contextmanager
def loaded(
    model: nn.Module, weights: Sequence[np.ndarray], loader: Loader
) -> Iterator[tuple[Iterable[Batch], Callable[[], Trained]]]:
    """The model loaded with `weights` for the loader's batches: the batches to train or evaluate on, and a
    function giving the model's weights once trained.

    For a bag of n-grams, the model's embedding is, inside the context, just the rows the batches index (an
    optimizer must be built inside), and the batches index that copy.
    """
    embedding = getattr(model, "embedding", None)
    if not isinstance(embedding, nn.EmbeddingBag) or not isinstance(loader.features, NgramFeatures):
        set_weights(model, list(weights))
        yield loader, lambda: Trained(get_weights(model), weights)
        return
    names = list(model.state_dict().keys())
    position = names.index("embedding.weight")
    whole = embedding.weight
    rows = indexed_rows(loader, whole.shape[0])
    with torch.no_grad():
        for name, param, array in zip(names, model.state_dict().values(), weights):
            if name != "embedding.weight":
                param.copy_(torch.from_numpy(np.asarray(array)))
    # a strategy's float64 model trains, as load_state_dict would load it, in the net's own dtype
    embedding.weight = nn.Parameter(torch.from_numpy(np.asarray(weights[position])[rows]).to(whole.device, whole.dtype))
    try:  # renumbered before the batch moves to device
        yield Renumbered(loader, rows, whole.shape[0]), lambda: Trained(get_weights(model), weights, position, rows)
    finally:
        embedding.weight = whole

"""A round's training replies as one update matrix (fedsim.byzantine.vectors), for the adversary's step and the
robust strategies: dense, or sparse where the clients changed few of the weights.

A sparse reply (fedsim.messages.sparse) is read as it travelled, its changed rows, when the round's changed weights
are under `SPARSE_BELOW` of the matrix; otherwise every reply is rebuilt whole. Either way an embedding row a
client did not touch is a zero update.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Message, RecordDict

from fedsim.byzantine.vectors import SPARSE_BELOW, Matrix, flat_size, is_weight, sparse_updates, updates
from fedsim.messages.records import Decoded
from fedsim.messages.sparse import RowsView

ARRAYS = "arrays"


def update_matrix(replies: Sequence[Message], start: Sequence[np.ndarray]) -> Matrix:
    """The replies' updates from `start`, a row each."""
    return content_matrix([r.content for r in replies], start)


def content_matrix(contents: Sequence[RecordDict], start: Sequence[np.ndarray]) -> Matrix:
    """The same from the replies' contents, which is what Flower hands a Bulyan selection rule."""
    floats = [s for s in start if is_weight(s)]
    pieces = [  # per reply and floating tensor: (changed row ids, those rows), or (None, the whole tensor)
        [
            a.changed() if isinstance(a, RowsView) else (None, a.numpy())
            for a, s in zip(content[ARRAYS].values(), start)
            if is_weight(s)
        ]
        for content in contents
    ]
    changed = sum(
        s.size if ids is None else len(ids) * (s.size // s.shape[0])
        for row in pieces
        for (ids, _), s in zip(row, floats)
    )
    if changed >= SPARSE_BELOW * len(contents) * flat_size(start):
        return updates([Decoded(content[ARRAYS]) for content in contents], start)
    return sparse_updates(pieces, start)

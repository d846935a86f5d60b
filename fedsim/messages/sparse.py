"""Sparse updates: a reply carries only the rows of a tensor that training changed.

A bow client with twenty reviews touches a few percent of its embedding's buckets; every row it never
touched comes back bitwise unchanged (Adam's and the proximal step's update of a zero gradient is zero),
so sending the whole embedding back is mostly sending the server its own model. `sparsify` keeps
the rows whose bytes differ from what the server sent (row ids and their new values); `densified` gives
the server arrays whose `numpy()` rebuilds the client's dense tensor exactly, from the sent model and
those rows, only when it is read, so the driver holds the sparse form until the aggregation reads it.

Exactness needs no assumption about the optimizer: rows are compared on their bytes (a 0.0 that became
-0.0 counts as changed), and a tensor whose changed rows would not save half its bytes stays dense
(model-poisoning attacks, most transformer layers, 1-D tensors).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedsim.config.compose import config_from
from fedsim.messages.records import ArrayView, Received, tensor_view, to_array, to_record, viewed
from fedsim.messages.transport import VIEWS

if TYPE_CHECKING:
    from fedsim.model.indexed_rows import Trained

SPARSE = "sparse"  # a reply's record of row ids, one int64 array per tensor sent as rows


def changed_rows(sent: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The ids of the rows (along the first axis) whose bytes differ, in increasing order.

    Rows are compared in the widest unsigned words that divide them, and the per-word verdicts of a row read
    eight at a time as one uint64: the same answer as comparing bytes, in far fewer operations
    (docs/benchmarks/measured.md, "Figures behind choices in the code").
    """
    rows = sent.shape[0]
    if sent.size == 0:
        return np.zeros(0, np.int64)
    row_bytes = sent.nbytes // rows
    word = next((w for w in (np.uint64, np.uint32, np.uint16) if row_bytes % np.dtype(w).itemsize == 0), np.uint8)
    before = np.ascontiguousarray(sent).view(word).reshape(rows, -1)
    after = np.ascontiguousarray(new).view(word).reshape(rows, -1)
    differs = before != after
    if differs.shape[1] % 8 == 0:
        differs = differs.view(np.uint64)
    return np.flatnonzero(differs.any(axis=1)).astype(np.int64)


def sparsify(sent: ArrayRecord, reply: ArrayRecord) -> tuple[ArrayRecord, ArrayRecord]:
    """(arrays, row ids) for a reply to `sent`: a tensor of two or more dimensions whose changed rows take
    less than half its bytes travels as those rows (its ids in the second record); every other one as it
    is. The arrays keep the reply's names and order."""
    arrays, ids = ArrayRecord(), ArrayRecord()
    for name, array in reply.items():
        before = sent.get(name)
        new = tensor_view(array.data)
        if before is None or not comparable(tensor_view(before.data), new.shape, new.dtype):
            arrays[name] = array
            continue
        rows = changed_rows(tensor_view(before.data), new)
        if not worth_it(rows, new):
            arrays[name] = array
            continue
        arrays[name] = to_array(np.ascontiguousarray(new[rows]))
        ids[name] = to_array(rows)
    return arrays, ids


def sparse_update(names: Sequence[str], sent: ArrayRecord, trained: Trained) -> tuple[ArrayRecord, ArrayRecord]:
    """What `sparsify(sent, to_record(names, trained.dense()))` gives, without building the dense embedding:
    its changed rows are sought only among the rows the client's data indexes, every other row being, by
    construction, the sent one (fedsim.model.indexed_rows.Trained)."""
    arrays, ids = ArrayRecord(), ArrayRecord()
    for i, name in enumerate(names):
        if i != trained.position or trained.rows is None:
            one, one_ids = sparsify(sent, to_record([name], [trained.weights[i]]))
            arrays[name] = one[name]
            if name in one_ids:
                ids[name] = one_ids[name]
            continue
        values, before = trained.weights[i], tensor_view(sent[name].data)
        if comparable(before, (before.shape[0], *values.shape[1:]), values.dtype):
            among = changed_rows(np.ascontiguousarray(before[trained.rows]), values)
            rows = trained.rows[among].astype(np.int64)
            if worth_it(rows, before):
                arrays[name] = to_array(np.ascontiguousarray(values[among]))
                ids[name] = to_array(rows)
                continue
        arrays[name] = to_array(trained.dense()[i])
    return arrays, ids


def comparable(sent: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Whether a tensor of this shape and dtype may travel as rows: two or more dimensions, as it was sent."""
    return len(shape) >= 2 and sent.shape == shape and sent.dtype == dtype


def worth_it(rows: np.ndarray, tensor: np.ndarray) -> bool:
    """Whether the rows and their ids take less than half the tensor's bytes."""
    return rows.nbytes + rows.size * (tensor.nbytes // tensor.shape[0]) < tensor.nbytes // 2


class RowsView(ArrayView):
    """A client's tensor as the sent model with the rows it changed: `numpy()` rebuilds it (a new array,
    the strategy's to read); `data` holds the rows as they travelled."""

    def numpy(self) -> np.ndarray:
        ids, rows = self.changed()
        dense = self.__dict__["_base"].copy()
        dense[ids] = rows
        return dense

    def changed(self) -> tuple[np.ndarray, np.ndarray]:
        """(the ids of the rows the client changed, those rows): the reply as it travelled, without rebuilding."""
        return self.__dict__["_ids"], super().numpy()


def densified(arrays: ArrayRecord, ids: ArrayRecord, sent: ArrayRecord, view: type[ArrayView]) -> ArrayRecord:
    """The reply's arrays as the strategy reads them: a sparse tensor as a RowsView over `sent`, every other
    one as `view` (its bytes shared, no copy), in a `Received` record."""
    record = Received()
    for name, a in arrays.items():
        if name not in ids:
            record[name] = view(a.dtype, tuple(a.shape), a.stype, a.data)
            continue
        base = tensor_view(sent[name].data)
        rebuilt = RowsView(a.dtype, tuple(base.shape), a.stype, a.data)
        rebuilt.__dict__["_base"], rebuilt.__dict__["_ids"] = base, tensor_view(ids[name].data)
        record[name] = rebuilt
    return record


def sparse_replies(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """A Flower mod, the client's half: with `sparse_updates`, a training reply sends the rows it changed of each
    large tensor instead of the whole tensor. It wraps the privacy mod: what it sparsifies is the update as
    clipped."""
    reply = call_next(message, context)
    if (
        message.metadata.message_type != MessageType.TRAIN
        or reply.has_error()
        or SPARSE in reply.content  # sparse already, from the rows the client trained (`sparse_update`)
        or not config_from(context.run_config).get("sparse_updates", False)
    ):
        return reply
    arrays, ids = sparsify(message.content["arrays"], reply.content["arrays"])
    if not len(ids):
        return reply
    return Message(RecordDict({**reply.content, "arrays": arrays, SPARSE: ids}), reply_to=message)


def for_aggregation(reply: Message, sent: ArrayRecord | None, transport: str) -> Message:
    """The server's half: a training reply as the strategy aggregates it, arrays that decode without a copy, read
    as float32 where the update travelled in float16/bfloat16 (fedsim.messages.transport), so the strategy
    aggregates in float32; a sparse reply's tensors rebuilt from the `sent` model as they are read."""
    content = reply.content
    if SPARSE in content:
        ids = content[SPARSE]
        del content[SPARSE]
        content["arrays"] = densified(content["arrays"], ids, sent, VIEWS[transport])
    else:
        content["arrays"] = viewed(content["arrays"], VIEWS[transport])
    return reply

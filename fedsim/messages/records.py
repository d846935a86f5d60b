"""Weights in Flower's messages: ArrayRecords made from named arrays, and read back without copying."""

from __future__ import annotations

import copyreg
import io
import math
from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord
from numpy.lib import format as npy

NUMPY_STYPE = "numpy.ndarray"


def tensor_view(tensor: bytes) -> np.ndarray:
    """A read-only array over one tensor in Flower's wire format (`np.save` bytes), no copy.

    `Array.numpy()` copies every tensor: a second copy of every reply in the server, on top of the messages
    themselves (docs/benchmarks/measured.md, "Figures behind choices in the code").
    """
    stream = io.BytesIO(tensor)
    version = npy.read_magic(stream)
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, fortran_order, dtype = read_header(stream)
    if dtype.hasobject:
        raise ValueError("object arrays are not weights")
    flat = np.frombuffer(tensor, dtype=dtype, count=math.prod(shape), offset=stream.tell())
    return flat.reshape(shape, order="F" if fortran_order else "C")


def record_views(record: ArrayRecord) -> list[np.ndarray]:
    """Every array of an ArrayRecord as a read-only view, in the record's (state_dict) order."""
    views = []
    for name, array in record.items():
        if array.stype != NUMPY_STYPE:
            raise ValueError(f"{name}: arrays of type {array.stype!r} are not weights")
        views.append(tensor_view(array.data))
    return views


class ArrayView(Array):
    """An Array whose `numpy()` is a read-only view of its bytes, not a copy. Flower's strategies decode
    every reply with `numpy()` as they aggregate (a copy of every reply, every round); they only read the
    replies, and write into arrays of their own."""

    def numpy(self) -> np.ndarray:
        return tensor_view(self.data)


class Received(ArrayRecord):
    """A reply's arrays as the server hands them to a strategy. `to_numpy_ndarrays(keep_input=False)`, which
    Flower's Bulyan calls on every reply it selects, empties the record as Flower's does
    but without Flower's `gc.collect()` after each record: a full collection of the server's heap per reply
    (Bulyan's 15 selected replies of a 25-client round spent about 2 s of the round in them), which frees
    nothing here, since the decoded arrays share the reply's bytes (docs/reference/patches.md lists it)."""

    def to_numpy_ndarrays(self, *, keep_input: bool = True) -> list[np.ndarray]:
        if keep_input:
            return super().to_numpy_ndarrays(keep_input=True)
        return [self.pop(name).numpy() for name in list(self.keys())]


def viewed(record: ArrayRecord, view: type[ArrayView] = ArrayView) -> ArrayRecord:
    """The record with its arrays as ArrayViews (sharing their bytes), a `Received` record. Set one by one:
    ArrayRecord's constructor would turn them back into plain Arrays."""
    views = Received()
    for name, a in record.items():
        views[name] = view(a.dtype, tuple(a.shape), a.stype, a.data)
    return views


class Decoded(Sequence[np.ndarray]):
    """A record's arrays as a sequence, each decoded (`Array.numpy()`) when it is read: a view for an ArrayView,
    a rebuilt tensor for a sparse reply's (fedsim.messages.sparse), held only while the reader holds it."""

    def __init__(self, record: ArrayRecord) -> None:
        self._arrays = list(record.values())

    def __len__(self) -> int:
        return len(self._arrays)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [a.numpy() for a in self._arrays[index]]
        return self._arrays[index].numpy()


def to_array(array: np.ndarray) -> Array:
    """`Array(array)`, the same bytes, with one copy of the data: Flower's `np.save` into a BytesIO copies the
    array about four times, once per client and round (docs/benchmarks/measured.md)."""
    array = np.asarray(array)
    if not array.flags.c_contiguous or array.dtype.hasobject:
        return Array(array)  # np.save's Fortran order, or its refusal of objects
    header = io.BytesIO()
    npy.write_array_header_1_0(header, npy.header_data_from_array_1_0(array))
    return Array(
        str(array.dtype), tuple(array.shape), NUMPY_STYPE, b"".join((header.getvalue(), array.reshape(-1).data))
    )


def to_record(names: Sequence[str], weights: Sequence[np.ndarray]) -> ArrayRecord:
    """An ArrayRecord of named arrays, in the given order."""
    record = ArrayRecord()
    for name, w in zip(names, weights):
        record[name] = to_array(w)
    return record


def _array(dtype: str, shape: tuple[int, ...], stype: str, data: np.ndarray) -> Array:
    return Array(dtype, shape, stype, data.tobytes())


def _reduce_array(array: Array):
    """Pickle an Array's bytes as a NumPy view, which pickle protocol 5 hands out of band: Ray then
    moves an update into its object store with one copy instead of writing it through the pickle
    stream, several times faster per message (docs/benchmarks/measured.md). Older protocols keep it in band."""
    return _array, (array.dtype, tuple(array.shape), array.stype, np.frombuffer(array.data, dtype=np.uint8))


copyreg.pickle(Array, _reduce_array)  # every process that handles fedsim's messages imports this module

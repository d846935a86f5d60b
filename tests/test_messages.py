"""Weights in Flower's messages: ArrayRecords built from named arrays, read back as zero-copy views."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedsim.messages import record_views, tensor_view, to_record


def test_views_equal_flowers_own_decoding_without_copying():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((300, 16)).astype(np.float32), np.arange(5, dtype=np.int64),
              np.float32(2.5) * np.ones(()), np.asfortranarray(rng.standard_normal((3, 4))),
              rng.standard_normal(7).astype(np.float16), np.zeros((0, 3), np.float32)]
    names = [f"layer{i}" for i in range(len(arrays))]
    record = to_record(names, arrays)
    assert list(record.keys()) == names  # state_dict order survives
    views = record_views(record)
    for view, (name, array), original in zip(views, record.items(), arrays):
        reference = array.numpy()
        assert view.dtype == reference.dtype and view.shape == reference.shape
        np.testing.assert_array_equal(view, original)
        assert not view.flags.writeable  # a view on the message's bytes, not a copy
    assert np.shares_memory(views[0], np.frombuffer(record["layer0"].data, dtype=np.uint8))


def test_non_numpy_arrays_are_refused():
    record = ArrayRecord({"w": Array(dtype="float32", shape=(1,), stype="torch.raw", data=b"\0\0\0\0")})
    with pytest.raises(ValueError, match="are not weights"):
        record_views(record)


def test_object_arrays_are_refused():
    stream = io.BytesIO()
    np.save(stream, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object arrays"):
        tensor_view(stream.getvalue())

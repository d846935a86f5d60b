"""Differential privacy on Flower's wrappers, checked from archived weights: clipping bounds every update,
the noise has the configured standard deviation, and ε is the accountant's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.privacy_accountant import NeighboringRelation
from dp_accounting.rdp import RdpAccountant
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from helpers.configs import QUICK, make_cfg
from helpers.runs import run_locally

from fedsim.outputs.archive import Archive
from fedsim.privacy.accounting import epsilon
from fedsim.privacy.dp import WEIGHT_KEY, uniform_weight
from fedsim.privacy.fixed_denominator import FixedDenominatorDP
from fedsim.run.experiment import build
from fedsim.server.cohort import Cohort
from fedsim.server.faults import Faults
from fedsim.server.participation import Participants
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
    # own update would have shrunk it (fedsim.privacy.adaptive)
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


def test_a_poisson_adaptive_run_records_the_release_it_is_charged_for(generated_imdb, tmp_path):
    """server_adaptive under Poisson sampling (100 clients, q = 0.2, z = 1.5, 2 rounds): fedsim's wrapper shifts
    the count, so the update and the count together are one Gaussian of multiplier z, and rounds.csv's ε is
    dp-accounting's PLD for the Poisson-subsampled Gaussian at z."""
    run_locally(
        make_cfg(
            f"data.path={generated_imdb}",
            "num_clients=100",
            "num_rounds=2",
            "data.train_size=2000",
            "data.test_size=100",
            "strategy.sampling=poisson",
            "strategy.fraction_train=0.2",
            "strategy.fraction_evaluate=0",
            "privacy=server_adaptive",
            "privacy.noise_multiplier=1.5",
            "privacy.initial_clipping_norm=1.0",
            # what is charged does not depend on the model's size nor on the statistics
            "model.net.num_buckets=4096",
            "scrutiny=false",
            "archive.mode=none",
        ),
        tmp_path,
    )
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "completed", info.get("error")
    assert (info["noise_multiplier_effective"], info["count_sensitivity"], info["noise_source"]) == (1.5, 0.5, "seeded")
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    for rnd in (1, 2):  # one release, then two composed
        accountant = PLDAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
        accountant.compose(dp_event.PoissonSampledDpEvent(0.2, dp_event.GaussianDpEvent(1.5)), rnd)
        assert rounds.epsilon[rnd] == pytest.approx(accountant.get_epsilon(1e-5), rel=0.02)


@pytest.mark.parametrize(
    "overrides, count_sensitivity, exact",
    [
        (["privacy=server_adaptive", "privacy.sampling=none"], 1.0, False),  # Flower's count, add-or-remove
        (["privacy=client_adaptive", "privacy.sampling=none"], 1.0, False),
        (["privacy=server_adaptive"], 1.0, True),  # Flower's count, replace-one: the split is exact
        (["privacy=server_adaptive", "strategy.sampling=poisson", "strategy.fraction_train=0.5"], 0.5, True),
        (["privacy=server_fixed"], None, True),
    ],
)
def test_the_multiplier_charged_is_the_releases_and_epsilon_is_dp_accountings_on_it(
    overrides, count_sensitivity, exact
):
    """z_eff = (z_Δ⁻² + (u σ_b / s_b)⁻²)^(-1/2) from the wrapper's own z_Δ and σ_b: z where the split holds, less
    for Flower's unshifted count under add-or-remove-one (the issue's qN = 10, z = 0.3: 106 reported, 141 due)."""
    experiment = build(make_cfg(*overrides, "num_clients=10", "privacy.noise_multiplier=0.3"))
    release = experiment.privacy.release(experiment.strategy)
    assert release.count_sensitivity == count_sensitivity and release.noise_source == "seeded"
    if exact:
        assert release.noise_multiplier_effective == 0.3
        return
    wrapper = experiment.strategy
    assert wrapper.clipped_count_stddev == 0.5  # 10 clients a round / 20
    combined = (wrapper.noise_multiplier**-2 + wrapper.clipped_count_stddev**-2) ** -0.5
    assert release.noise_multiplier_effective == pytest.approx(combined, rel=1e-12) and combined < 0.3
    accountant = RdpAccountant(neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE)
    accountant.compose(dp_event.GaussianDpEvent(combined), 100)
    charged = epsilon(release.noise_multiplier_effective, 10, 10, 100, 1e-5, "none", "rdp")
    assert charged == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    assert charged > epsilon(0.3, 10, 10, 100, 1e-5, "none", "rdp") * 1.2


def test_noise_source_is_seeded_in_simulation_secure_in_deployment_and_refused_otherwise():
    assert build(make_cfg("privacy=server_fixed")).privacy.noise_source == "seeded"
    assert build(make_cfg("privacy=server_fixed", "runtime=deployment")).privacy.noise_source == "secure"
    with pytest.raises(ConfigError) as refused:
        build(make_cfg("privacy=server_fixed", "privacy.noise_source=os"))
    assert refused.value.key == "privacy.noise_source" and "allowed: seeded, secure" in str(refused.value)


def test_a_reply_weighing_other_than_one_under_dp_is_recorded_failed_not_aggregated(task_identity, monkeypatch):
    """The noise is sized for an equal-weight average: a reply with aggregation-weight 2 or 0 (a client without
    fedsim's mod, or a malicious one) counts as failed with the reason, and only the others reach the strategy."""

    def reply(weight: float) -> Message:
        metrics = MetricRecord({WEIGHT_KEY: weight, "num-examples": 5, "train-loss": 0.5, "fit-time": 0.1})
        content = RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(3, np.float32))}), "metrics": metrics})
        return Message(content, reply_to=Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN))

    participants = Participants({0: 10, 1: 11, 2: 12}, seed=0)
    monkeypatch.setattr(participants, "exchange", lambda grid, messages, partitions, timeout: {
        0: reply(1), 1: reply(2), 2: reply(0)
    })  # fmt: skip
    cohort = Cohort(None, participants, Faults(), seed=0, local_epochs=1, refuse=uniform_weight)
    sent = [Message(RecordDict(), dst_node_id=0, message_type=MessageType.TRAIN) for _ in range(3)]
    trained = cohort.train(1, sent)
    assert list(trained.replies) == [0] and [u.client_id for u in trained.updates] == [0]
    assert [(f.client_id, f.status, f.error) for f in trained.failures] == [
        (1, "failed", "aggregation-weight 2 under differential privacy; allowed: 1 (every client weighs the same)"),
        (2, "failed", "aggregation-weight 0 under differential privacy; allowed: 1 (every client weighs the same)"),
    ]

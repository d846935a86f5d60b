"""privacy.noise_source: a seeded run's noise and cohort repeat from its seed; a secure run's come from the operating
system's entropy, so that nobody holding the run's files can recompute them."""

from __future__ import annotations

import json

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from helpers.configs import QUICK, make_cfg
from helpers.runs import run_locally
from safetensors.numpy import load_file

from fedsim.privacy.randomness import NoiseSource
from fedsim.server.participation import TRAIN, Participants, Sampling


def test_seeded_noise_is_the_runs_seed_and_round_and_secure_noise_is_never_the_same():
    NoiseSource("seeded", 7).seed_round(3)
    seeded = np.random.normal(size=5)
    np.random.seed([7, 3])
    assert np.array_equal(seeded, np.random.normal(size=5))
    draws = []
    for _ in range(2):
        NoiseSource("secure", 7).seed_round(3)
        draws.append(np.random.normal(size=5))
    assert not np.array_equal(draws[0], draws[1]) and not np.array_equal(draws[0], seeded)


def test_a_secret_draw_of_the_cohort_does_not_follow_the_seed(task_identity):
    messages = [Message(RecordDict(), dst_node_id=0, message_type=MessageType.TRAIN) for _ in range(10)]

    def cohort(sampling: Sampling) -> list[int]:
        return Participants({i: i for i in range(100)}, seed=3, sampling=sampling).pick(1, TRAIN, messages)[1]

    assert cohort(Sampling()) == cohort(Sampling())
    assert cohort(Sampling(secret=True)) != cohort(Sampling(secret=True))  # equal by chance: 1 in 1.7e13
    poisson = Sampling("poisson", 0.1, 0.1, secret=True)
    assert len({tuple(cohort(poisson)) for _ in range(3)}) == 3


def test_a_secure_dp_run_records_its_source_and_does_not_repeat(generated_imdb, tmp_path):
    """Two runs with one seed: seeded, bitwise the same model; secure, different noise, so different models."""
    models = {}
    for source in ("seeded", "secure"):
        for attempt in (0, 1):
            run_dir = tmp_path / f"{source}{attempt}"
            run_locally(
                make_cfg(
                    f"data.path={generated_imdb}",
                    *QUICK,
                    "num_rounds=1",  # one release: seeded noise repeats, secure noise does not
                    "scrutiny=false",
                    "archive.mode=none",
                    "privacy=server_fixed",
                    "privacy.noise_multiplier=0.1",
                    f"privacy.noise_source={source}",
                ),
                run_dir,
            )
            assert json.loads((run_dir / "run.json").read_text())["noise_source"] == source
            models[source, attempt] = load_file(run_dir / "model.safetensors")
    for name, weights in models["seeded", 0].items():
        assert np.array_equal(weights, models["seeded", 1][name])
    assert any(not np.array_equal(w, models["secure", 1][n]) for n, w in models["secure", 0].items())

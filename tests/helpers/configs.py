"""The configs the tests run, composed as main.py composes them."""

from __future__ import annotations

from omegaconf import DictConfig

from fedsim.config.compose import compose

# The session's reference run (conftest's small_run, main.py in simulation): every other way of running the same
# config (deployment, `flwr run`, a Ray cluster, a resume) must give its numbers exactly.
SMALL = ["num_clients=3", "num_rounds=2", "data.train_size=1500", "data.test_size=500", "client.local_epochs=3"]
# The loop in-process (helpers.runs.run_locally): seconds a run.
QUICK = ["num_clients=4", "num_rounds=2", "data.train_size=400", "data.test_size=100"]
# Enough clients and data for attacks to show against robust aggregators.
ATTACKED = [
    "num_clients=10",
    "num_rounds=3",
    "data.train_size=5000",
    "data.test_size=1000",
    "client.local_epochs=2",
    "client.lr=0.05",
]
# Columns that measure the machine (durations, memory, which Ray node): left out when runs are compared.
TIMING = ["round_time_s", "fit_time_s", "driver_rss_mb", "driver_shared_mb", "node"]
RETRY_COLUMNS = ["retries", "retry_reason"]  # clients.csv: what a crash redid
METRICS = ["central_loss", "central_accuracy", "fed_loss", "fed_accuracy", "train_loss"]


def make_cfg(*overrides: str) -> DictConfig:
    """The project's config with overrides, composed as `main.py` would."""
    return compose(overrides)

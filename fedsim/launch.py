"""Flower's simulation from Python: `run_simulation`, kept behind this one function.

Flower 1.41 still has no other Python entry into simulation (`flwr run` is the CLI's), and its
`run_simulation` gives the apps no run config; `simulate` hands the ClientApp the resolved
config itself (see fedsim.client_app) and the ServerApp the session it runs.
"""

from __future__ import annotations

import logging
import signal

from omegaconf import DictConfig

from fedsim.client_app import make_client_app
from fedsim.experiment import Session
from fedsim.interrupts import Interrupted, raise_on_signals
from fedsim.server_app import make_server_app


def backend_config(cfg: DictConfig) -> dict:
    """Flower's Ray backend settings: each client actor's CPU and (fractional) GPU share."""
    verbose = logging.getLevelNamesMapping()[cfg.log_level] <= logging.INFO
    return {
        "client_resources": {"num_cpus": float(cfg.resources.num_cpus), "num_gpus": float(cfg.resources.num_gpus)},
        "init_args": {"logging_level": cfg.log_level, "log_to_driver": verbose, "include_dashboard": False},
    }


def simulate(session: Session) -> None:
    """Run the session's rounds in Flower's Ray-backed simulation, one SuperNode per client."""
    from flwr.simulation import run_simulation

    cfg, experiment = session.cfg, session.experiment
    raise_on_signals()
    try:
        run_simulation(
            server_app=make_server_app(session),
            client_app=make_client_app(experiment.client_fn, experiment.run_config),
            num_supernodes=cfg.num_clients,
            backend_name="ray",
            backend_config=backend_config(cfg),
            verbose_logging=cfg.log_level == "DEBUG",
        )
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:
            raise
        raise Interrupted(signal.SIGTERM) from None  # ray.init's own SIGTERM handler is sys.exit(15)

"""Flower's simulation from Python: `run_simulation`, kept behind this one function.

Flower 1.41 still has no other Python entry into simulation (`flwr run` is the CLI's), and its
`run_simulation` gives the apps no run config; `simulate` hands the ClientApp the resolved
config itself (see fedsim.client_app) and the ServerApp the session it runs.
"""

from __future__ import annotations

import logging
import signal

from omegaconf import DictConfig

from fedsim.checks import evaluate_clients_per_round, fit_clients_per_round
from fedsim.client_app import make_client_app
from fedsim.cluster import actor_pool_limit, address_of, attach, max_actors
from fedsim.data import client_files, load_prepared
from fedsim.experiment import Session
from fedsim.interrupts import interrupted, raise_on_signals
from fedsim.server_app import make_server_app
from fedsim.shipping import ship


def backend_config(cfg: DictConfig) -> dict:
    """Flower's Ray backend settings: each client actor's CPU and (fractional) GPU share, and a private Ray
    instance (`address="local"`: plain `ray.init()` would join a cluster already running on this machine).
    An attached run has connected before (fedsim.cluster.attach), so Flower uses that connection."""
    verbose = logging.getLevelNamesMapping()[cfg.log_level] <= logging.INFO
    return {
        "client_resources": {"num_cpus": float(cfg.resources.num_cpus), "num_gpus": float(cfg.resources.num_gpus)},
        "init_args": {"address": "local", "logging_level": cfg.log_level, "log_to_driver": verbose,
                      "include_dashboard": False},
    }


def node_slots(cfg: DictConfig) -> int | None:
    """How many simulated SuperNodes serve the clients (`runtime.node_slots`), or None for one per client.

    Flower's simulation engine polls its message store for every node every 0.1 s, scanning every
    stored message, so 1,000 idle nodes cost more than the 50 that work. `auto`: as many as a round
    sends messages at once (training or evaluation).
    """
    slots = cfg.runtime.get("node_slots") if "runtime" in cfg else None
    if slots == "auto":
        slots = max(fit_clients_per_round(cfg), evaluate_clients_per_round(cfg))
    return None if slots is None or int(slots) >= cfg.num_clients else int(slots)


def simulate(session: Session) -> None:
    """Run the session's rounds in Flower's Ray-backed simulation: one SuperNode per client, or a pool; on a
    private Ray instance, or on the cluster at `ray.address` with the clients' data shipped to its nodes."""
    from flwr.simulation import run_simulation

    cfg, experiment = session.cfg, session.experiment
    slots = node_slots(cfg)
    session.info.update(simulated_nodes=slots or int(cfg.num_clients))
    raise_on_signals()
    mods = []
    try:
        if address_of(cfg) is not None:
            session.info.update(ray_address=address_of(cfg), cluster_client_slots=attach(cfg))
            mods.append(ship(client_files(cfg, load_prepared(cfg))).mod)
        with actor_pool_limit(max_actors(cfg)):
            run_simulation(
                server_app=make_server_app(session, slots),
                client_app=make_client_app(experiment.client_fn, experiment.run_config, mods),
                num_supernodes=slots or cfg.num_clients,
                backend_name="ray",
                backend_config=backend_config(cfg),
                verbose_logging=cfg.log_level == "DEBUG",
            )
    except SystemExit as exc:
        if exc.code != signal.SIGTERM:
            raise
        raise interrupted(signal.SIGTERM) from None  # ray.init's own SIGTERM handler is sys.exit(15)
    finally:
        import ray

        ray.shutdown()  # Flower's backend shuts Ray down too, unless the run stopped before it was built

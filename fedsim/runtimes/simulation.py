"""Flower's simulation from Python: `run_simulation`, kept behind this one function.

Flower 1.41 still has no other Python entry into simulation (`flwr run` is the CLI's), and its
`run_simulation` gives the apps no run config; `simulate` hands the ClientApp the resolved
config itself (see fedsim.client.app) and the ServerApp the session it runs.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from fedsim.client.app import make_client_app
from fedsim.config.settings import SimulationSettings
from fedsim.data.prepare import client_files, load_prepared
from fedsim.run.server_app import make_server_app
from fedsim.run.session import Session
from fedsim.run.steps import run_experiment
from fedsim.rundir import MAIN_LOG
from fedsim.runtimes.cluster import actor_pool_limit, attach
from fedsim.runtimes.engine_logs import engine_logs_to
from fedsim.runtimes.recovery import NodeLost, RayWatch, WatchedGrid, end_leftovers, retried
from fedsim.runtimes.shipping import ship
from fedsim.runtimes.warm import forget, ray_for
from fedsim.system.errors import RunFailed
from fedsim.system.signals import raise_on_signals


@dataclass
class Simulation:
    """Flower's Ray-backed simulation, driven from this process."""

    name: str = "simulation"
    node_slots: int | str | None = "auto"  # read by fedsim.runtimes.simulation.node_slots
    cohort_messages: bool = True  # read by fedsim.run.server_app.federate
    startup_timeout_s: float = 120.0  # these two: read by the round loop (fedsim.config.settings.ServerSettings)
    reply_timeout_s: float = 3600.0
    max_retries: int = 2  # these two: read by `simulate` (fedsim.runtimes.recovery)
    max_restarts: int = 2

    def run(self, cfg: DictConfig, run_dir: Path) -> dict:
        return run_experiment(cfg, run_dir, federate=simulate)


def backend_config(sim: SimulationSettings) -> dict:
    """Flower's Ray backend settings: each client actor's CPU and (fractional) GPU share, and a private Ray
    instance (`address="local"`: plain `ray.init()` would join a cluster already running on this machine).
    An attached run has connected before (fedsim.runtimes.cluster.attach), so Flower uses that connection."""
    verbose = logging.getLevelNamesMapping()[sim.log_level] <= logging.INFO
    return {
        "client_resources": {"num_cpus": sim.num_cpus, "num_gpus": sim.num_gpus},
        "init_args": {
            "address": "local",
            "logging_level": sim.log_level,
            "log_to_driver": verbose,
            "include_dashboard": False,
        },
    }


def node_slots(sim: SimulationSettings, at_once: int, actors: int) -> int | None:
    """How many simulated SuperNodes serve the clients (`runtime.node_slots`), or None for one per client.

    Flower's simulation engine polls its message store for every node every 0.1 s, scanning every
    stored message, so 1,000 idle nodes cost more than the 50 that work. `auto`: as many as a round
    sends messages at once (`at_once`: training or evaluation); with `runtime.cohort_messages`, no more than
    the `actors` that run clients at once, each node's one message then carrying its share of the round.
    """
    slots = sim.node_slots
    if slots == "auto":
        slots = at_once
        if sim.cohort_messages:
            slots = max(1, min(slots, actors))
    return None if slots is None or int(slots) >= sim.num_clients else int(slots)


def local_client_slots(sim: SimulationSettings) -> int:
    """How many clients this machine runs at once: Ray's CPU count over each client's CPUs (and GPUs)."""
    import ray._private.utils as ray_utils  # Ray only once a simulation starts, after the run's checks and data step

    fit = int(ray_utils.get_num_cpus() // sim.num_cpus)
    if sim.num_gpus > 0:
        fit = min(fit, int(torch.cuda.device_count() // sim.num_gpus))
    return max(1, fit)


QUEUE_WAIT_S = 0.05  # the longest a thread of Flower's simulation runtime waits on an empty queue


class ShortWaits(queue.Queue):
    """The queues of Flower's simulation runtime (messages to the client actors, their replies): its threads
    wait on them with a timeout (Flower's 1 s) only to look at the run's stop flag between waits, and the run
    ends when the last of them has looked. A wait here lasts at most QUEUE_WAIT_S, so a run's simulation ends
    within that of its last round (docs/benchmarks/measured.md has what it saves)."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return super().get(block, None if timeout is None else min(timeout, QUEUE_WAIT_S))


@contextlib.contextmanager
def short_queue_waits() -> Iterator[None]:
    """For one simulation: the queues Flower's simulation runtime makes are ShortWaits (Flower 1.42 has no
    setting for the wait; docs/reference/patches.md)."""
    from flwr.server.superlink.fleet.vce import vce_api  # Flower's simulation only once one starts

    flowers = vce_api.Queue
    vce_api.Queue = ShortWaits
    try:
        yield
    finally:
        vce_api.Queue = flowers


def start_ray(sim: SimulationSettings) -> int:
    """Ray for one simulation, and how many clients it runs at once: the cluster at `ray.address` attached to, or
    the private instance Flower's backend would start (its `init_args`), started here so that Flower's backend,
    which calls ray.init only while Ray is not initialised, finds it running; a warm one (fedsim.runtimes.warm)
    is used as it is. ray.init replaces the SIGTERM handler with its own `sys.exit(15)`, which would unwind
    Flower's engine (and kill its actors, whose worker threads then print errors) before fedsim hears of the
    signal, so the handler it found is put back at once: SIGTERM stays fedsim's (fedsim.system.signals)."""
    import ray  # Ray only once a simulation starts, after the run's checks and data step

    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if sim.address is not None:
            return attach(sim)
        if not ray.is_initialized():
            ray.init(**backend_config(sim)["init_args"])
        return local_client_slots(sim)
    finally:
        # Ray sets its handler only in the main thread, and signal.signal works only there.
        if sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)


def ray_settings(sim: SimulationSettings) -> dict | None:
    """What a warm Ray instance and its actors must match to serve the run (fedsim.runtimes.warm); None on a
    cluster, whose Ray is never kept."""
    if sim.address is not None:
        return None
    return {**backend_config(sim), "max_actors": sim.max_actors}


def simulate(session: Session) -> None:
    """Run the session's rounds in Flower's Ray-backed simulation; when the Ray instance dies under it, start a
    new one and resume from the last checkpoint, up to `runtime.max_restarts` times (fedsim.runtimes.recovery)."""
    sim = SimulationSettings.of(session.cfg)
    raise_on_signals()
    restarts = 0
    while True:
        watch = RayWatch(sim.address)
        try:
            simulate_once(session, sim, watch)
            return
        except NodeLost as lost:
            restarts += 1
            in_round = session.rounds_done() + 1
            end_leftovers(watch)
            forget()
            end_leftovers(watch)
            budget, resume = sim.max_restarts, f"resume with: python main.py resume={session.run_dir}"
            if sim.address is not None:  # a cluster is not this run's to start again
                raise RunFailed(f"{lost} in round {in_round}; {resume}") from None
            if restarts > budget:
                spent = f"after runtime.max_restarts={budget} restarts"
                raise RunFailed(f"{lost} in round {in_round}, {spent}; {resume}") from None
            session.restart(f"{lost} in round {in_round}")
            print(
                f"warning: {lost} in round {in_round}; a new Ray instance resumes the run after round "
                f"{session.rounds_done()} (restart {restarts} of runtime.max_restarts={budget})",
                file=sys.stderr,
                flush=True,
            )


def simulate_once(session: Session, sim: SimulationSettings, watch: RayWatch) -> None:
    """One simulation of the session's rounds: one SuperNode per client, or a pool; on a private Ray instance,
    or on the cluster at `ray.address` with the clients' data shipped to its nodes. NodeLost if the Ray
    instance dies under it."""
    from flwr.simulation import run_simulation  # Flower's simulation only after the run's checks and data step

    experiment = session.experiment
    mods = []
    with engine_logs_to(session.run_dir / MAIN_LOG, sim.log_level), ray_for(ray_settings(sim)):
        actors = start_ray(sim)
        if sim.address is not None:
            session.info.update(ray_address=sim.address, cluster_client_slots=actors)
            mods.append(ship(client_files(experiment.data, load_prepared(experiment.data))).mod)
        slots = node_slots(sim, experiment.counts.at_once, min(actors, sim.max_actors))
        session.info.update(simulated_nodes=slots or sim.num_clients)
        with (
            actor_pool_limit(sim.max_actors),
            short_queue_waits(),
            retried(sim.max_retries, watch),
        ):
            run_simulation(
                server_app=make_server_app(session, slots, lambda grid: WatchedGrid(grid, watch)),
                client_app=make_client_app(experiment.client_fn, experiment.run_config, mods),
                num_supernodes=slots or sim.num_clients,
                backend_name="ray",
                backend_config=backend_config(sim),
                verbose_logging=sim.log_level == "DEBUG",
            )

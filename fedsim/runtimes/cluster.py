"""Where a simulation's clients run on Ray (`ray.address`, `ray.max_actors`): a private instance, or a
running cluster the driver attaches to; how many client actors a run may hold; which node ran a client.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from fedsim.config.settings import SimulationSettings
from fedsim.runtimes.ports import knock
from fedsim.system.errors import ConfigError


@dataclass(frozen=True)
class NodeResources:
    """One alive Ray node's total CPUs and GPUs."""

    cpus: float
    gpus: float

    def slots(self, num_cpus: float, num_gpus: float) -> int:
        """Client actors of these per-client resources that fit this node (Flower's own per-node rule)."""
        fit = int(self.cpus / num_cpus)
        return min(fit, int(self.gpus / num_gpus)) if num_gpus > 0 else fit


def cluster_nodes() -> list[NodeResources]:
    """The alive nodes of the Ray cluster this process is connected to."""
    import ray  # Ray only once a simulation starts, after the run's checks and data step

    return [
        NodeResources(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes()
        if n.get("Alive") and n.get("Resources")
    ]


def check_fits(nodes: Sequence[NodeResources], num_cpus: float, num_gpus: float, where: str) -> int:
    """The client slots of the cluster; ConfigError when no node can host one client (Ray would wait forever)."""
    slots = sum(node.slots(num_cpus, num_gpus) for node in nodes)
    if slots:
        return slots
    largest_cpus = max((n.cpus for n in nodes), default=0)
    largest_gpus = max((n.gpus for n in nodes), default=0)
    key, asked, largest = (
        ("resources.num_gpus", num_gpus, largest_gpus)
        if num_gpus > largest_gpus
        else ("resources.num_cpus", num_cpus, largest_cpus)
    )
    raise ConfigError(
        key,
        f"{asked:g} per client, but no node of {where} has that many ({len(nodes)} nodes, "
        f"{sum(n.cpus for n in nodes):g} CPUs and {sum(n.gpus for n in nodes):g} GPUs in all; the "
        f"largest has {largest_cpus:g} CPUs and {largest_gpus:g} GPUs), so Ray would wait forever "
        f"to place a client; allowed: at most {largest:g}",
    )


def attach(sim: SimulationSettings) -> int:
    """Connect this process to the cluster at `ray.address` and return its client slots; ConfigError when the
    per-client resources fit no node. Ray refuses num_cpus/num_gpus when attaching: the cluster has its own.

    fedsim's own code travels with the run (Ray's `py_modules`), so a node needs only its dependencies."""
    import ray  # Ray only once a simulation starts, after the run's checks and data step

    address = sim.address
    verbose = logging.getLevelNamesMapping()[sim.log_level] <= logging.INFO
    try:
        if address != "auto":  # ray.init retries an unreachable address for minutes
            knock(address, 5)
        ray.init(
            address=address,
            logging_level=sim.log_level,
            log_to_driver=verbose,
            runtime_env={"py_modules": [str(Path(__file__).parents[1])]},
        )
    except OSError as exc:  # ConnectionError included
        raise ConfigError(
            "ray.address",
            f"no Ray cluster at {address!r} ({str(exc).splitlines()[0]}); allowed: "
            "the address of a running cluster's head (HOST:PORT, as `ray start --head` prints "
            "it), auto, or null for a private instance",
        ) from None
    try:
        return check_fits(
            cluster_nodes(),
            sim.num_cpus,
            sim.num_gpus,
            f"the Ray cluster at {address}",
        )
    except ConfigError:
        ray.shutdown()
        raise


@contextlib.contextmanager
def actor_pool_limit(limit: int) -> Iterator[None]:
    """Flower sizes its actor pool to every client slot of the whole cluster and holds it for the run. Capped,
    concurrent runs on one cluster hold disjoint actors (uncapped, each waits on actors the other holds),
    and a run on a large cluster starts no more actors than it sends messages at once. Flower 1.41 has no
    setting for this, so the one function its pool calls is wrapped for the run."""
    from flwr.simulation.ray_transport import ray_actor  # Flower's simulation only once one starts

    sized = ray_actor.pool_size_from_resources
    ray_actor.pool_size_from_resources = lambda resources: min(limit, sized(resources))
    try:
        yield
    finally:
        ray_actor.pool_size_from_resources = sized

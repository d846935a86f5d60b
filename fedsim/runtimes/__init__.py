"""Where a run's clients live (`runtime=simulation|deployment`, conf/runtime/): the same ServerApp and
ClientApp, in Flower's simulation, or as real processes talking over TLS; a Ray cluster for either's
clients (simulation) and the certificates a deployment needs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hydra.utils import instantiate
from omegaconf import DictConfig

if TYPE_CHECKING:
    from fedsim.runtimes.deployment import Deployment
    from fedsim.runtimes.simulation import Simulation


def runtime_of(cfg: DictConfig) -> Simulation | Deployment:
    """The config's runtime."""
    return instantiate(cfg.runtime)

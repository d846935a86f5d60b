"""`build(cfg)`: the one place a config becomes an experiment, checked whole before any data is read.

main.py, the `flwr run` ServerApp and run_and_collect's pre-check all call it. Tests and bench
scripts pass their own parts (a client factory, extra outputs) through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from flwr.serverapp.strategy import Strategy
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from fedsim.attacks import Attack, malicious_of
from fedsim.callbacks import Callback
from fedsim.checks import check_strategy, fit_clients_per_round, validate
from fedsim.client import ClientFn, client_fn
from fedsim.config import flatten
from fedsim.errors import ConfigError, first_line
from fedsim.faults import Faults
from fedsim.privacy import Privacy
from fedsim.tracking import NoTracking, Tracker
from fedsim.transport import transport_of


@dataclass
class Experiment:
    """A checked config and the parts of its run; nothing read or written yet."""

    cfg: DictConfig
    strategy: Strategy  # inside Flower's DP wrapper under `privacy`
    attack: Attack
    malicious: list[int]
    faults: Faults
    run_config: dict[str, Any]  # what the clients see as context.run_config
    privacy: Privacy = field(default_factory=Privacy)
    tracker: Tracker = field(default_factory=NoTracking)
    client_fn: ClientFn = client_fn
    callbacks: list[Callback] = field(default_factory=list)  # outputs added to the standard ones


def build(cfg: DictConfig, *, client_fn: ClientFn = client_fn, callbacks: Sequence[Callback] = (),
          run_config: Mapping[str, Any] | None = None) -> Experiment:
    """Check the whole config and build the strategy and the attack; raise ConfigError on the first problem.

    `run_config` is the run config the clients get; by default the resolved config itself.
    """
    validate(cfg)
    strategy = _instantiate(cfg, "strategy")
    check_strategy(strategy, cfg)
    attack = _instantiate(cfg, "attack")
    faults = _instantiate(cfg, "faults") if "faults" in cfg else Faults()
    privacy = _instantiate(cfg, "privacy") if "privacy" in cfg else Privacy()
    privacy.check(strategy, attack.name, transport_of(cfg))
    tracker = _instantiate(cfg, "tracking") if "tracking" in cfg else NoTracking()
    return Experiment(cfg=cfg, strategy=privacy.wrap(strategy, fit_clients_per_round(cfg)), attack=attack,
                      malicious=malicious_of(attack, int(cfg.num_clients), int(cfg.seed)), faults=faults,
                      privacy=privacy, tracker=tracker,
                      run_config=dict(run_config) if run_config is not None else flatten(cfg),
                      client_fn=client_fn, callbacks=list(callbacks))


def _instantiate(cfg: DictConfig, key: str) -> Any:
    """A config group's object; its constructor's own refusal becomes a one-line ConfigError."""
    try:
        return instantiate(cfg[key])
    except InstantiationException as exc:
        raise ConfigError(key, f"{cfg[key].get('_target_')} refused its settings: "
                          f"{first_line(exc.__cause__ or exc)}") from None

"""What a collection runs: the cross product of its sweeps with its seeds, each configuration checked as
main.py checks it before anything is created.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from omegaconf import DictConfig

from fedsim.config.compose import compose
from fedsim.config.overrides import check, parse, values
from fedsim.config.settings import SimulationSettings
from fedsim.system.errors import ConfigError

DEFAULT_CONFIG = "defaults"
PLANNED = "planned"  # runs.csv's reason for a run the command asked for (fedsim.collections.precision adds others)


class CollectionError(Exception):
    """Bad command-line input for a collection, reported as one line before anything runs."""


@dataclass(frozen=True)
class Planned:
    """One run to have: a configuration (Hydra overrides, without the seed) and a seed; and why the collection
    has it (runs.csv's reason: `planned` by the command, or added for a contrast's precision)."""

    overrides: tuple[str, ...]
    seed: int
    reason: str = field(default=PLANNED, compare=False)

    @property
    def config(self) -> str:
        return " ".join(self.overrides) or DEFAULT_CONFIG


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """`KEY=A,B,C` -> (KEY, [A, B, C]), read by Hydra's override parser: list values and quoting mean what they
    mean to main.py (`archive.layers=[embedding.*],[fc.*]` is two lists)."""
    key, sep, rest = text.partition("=")
    if not sep or not key or not rest:
        raise CollectionError(f"--sweep: got {text!r}; expected KEY=A,B,C")
    try:
        [override] = parse([text])
    except ConfigError as exc:
        raise CollectionError(f"--sweep: {exc}") from None
    return override.key_or_group, values(override)


def configurations(overrides: Sequence[str], sweeps: Sequence[str]) -> list[tuple[str, ...]]:
    """The cross product of the sweeps, each with the shared overrides in front."""
    for override in overrides:
        if override.split("=", 1)[0].lstrip("+~") == "seed":
            raise CollectionError(f"seed: given as an override ({override}); choose seeds with --runs or --seeds")
    axes = [[f"{key}={value}" for value in values] for key, values in map(parse_sweep, sweeps)]
    return [tuple(overrides) + combo for combo in itertools.product(*axes)]


def plan(overrides: Sequence[str], sweeps: Sequence[str], seeds: Sequence[int]) -> list[Planned]:
    """Seeds outermost, so an unfinished collection already compares every configuration."""
    if len(set(seeds)) != len(seeds):
        raise CollectionError(f"--seeds: {list(seeds)} repeats a seed")
    return [Planned(config, seed) for seed in seeds for config in configurations(overrides, sweeps)]


def default_name(overrides: Sequence[str], sweeps: Sequence[str]) -> str:
    """A folder name from the overrides and sweeps, e.g. `num_rounds=3_strategy=fedavg,fedmedian`."""
    name = re.sub(r"[^A-Za-z0-9._=,+-]+", "-", "_".join([*overrides, *sweeps])).strip("-_.")
    return name[:120] or "default"


def check_plan(planned: Sequence[Planned]) -> None:
    """Refuse, before anything is created, a configuration main.py would refuse at once: its overrides
    (fedsim.config.overrides) and their values (fedsim.run.experiment), as main.py checks them. A CollectionError
    naming the configuration; what only the data can tell (a partition too small) is found by the run, and recorded."""
    from fedsim.run.experiment import build  # torch only to check: a Ray job's watchdog imports this module

    for config in dict.fromkeys(run.overrides for run in planned):
        seed = next(run.seed for run in planned if run.overrides == config)
        try:
            build(check([*config, f"seed={seed}"]))
        except ConfigError as exc:
            where = f" (in {' '.join(config)})" if config else ""
            raise CollectionError(f"{exc}{where}") from None


def composed(run: Planned) -> DictConfig | None:
    """A run's config, or None where it does not compose (run_collection records that run failed)."""
    try:
        return compose([*run.overrides, f"seed={run.seed}"])
    except Exception:
        return None


def jobs_that_fit(planned: Sequence[Planned], cpus: int) -> int:
    """`--jobs auto` on this machine: as many runs at once as its `cpus` fit, a run taking `resources.num_cpus`
    for each client actor it holds (as many as a round sends messages at once, `ray.max_actors`, at most what
    the machine fits). A run that alone fills the machine goes alone."""
    configs = list(filter(None, (composed(run) for run in planned))) or [compose([])]
    slots = max(1, int(cpus // max(float(c.resources.num_cpus) for c in configs)))
    per_run = max(min(slots, SimulationSettings.of(c).max_actors) for c in configs)
    return max(1, slots // per_run)

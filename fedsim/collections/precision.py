"""Seeds chosen by precision (`--until-conclusive --max-seeds N --batch B [--futility]`): a collection starts with the
seeds it was given, then adds seeds, B at a time, only to the configurations (and their baselines) whose contrasts
are still inconclusive, until each is conclusive or has N pairs; with `--futility`, or until, from 5 pairs on, it
would need more than N.

Which seeds: first those one side of a contrast already has (a pair for the price of one run), then the smallest
seeds neither has tried. runs.csv records why each run was added (`reason`). A rerun of the same command takes the
added runs from the ledger and goes on where it stopped.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd

from fedsim.collections.contrasts import Baseline, changed
from fedsim.collections.ledger import Collection
from fedsim.collections.plan import PLANNED, CollectionError, Planned

FUTILE_FROM = 5  # pairs: from here a contrast's spread is estimated well enough (4 degrees of freedom) to give up on


@dataclass(frozen=True)
class Precision:
    """`--max-seeds`: the pairs a contrast gets at most; `--batch`: the seeds added to it at a time; `futility`:
    a contrast with FUTILE_FROM pairs or more whose seeds_needed is beyond max_seeds gets no more (it could not be
    decided within them at the difference and spread measured), so that the seeds go where they can decide."""

    max_seeds: int | None
    batch: int = 2
    futility: bool = False

    def futile(self, n_pairs: int, seeds_needed: float) -> bool:
        return self.futility and n_pairs >= FUTILE_FROM and not seeds_needed <= self.max_seeds

    def check(self, seeds: Sequence[int], baselines: Sequence[Baseline]) -> None:
        """Refuse what cannot choose seeds: no contrasts to choose them by, no bound, or fewer than given."""
        if not baselines or self.max_seeds is None:
            raise CollectionError(
                "--until-conclusive: needs --baseline KEY=VALUE and --max-seeds N; allowed: both given"
            )
        if self.batch < 1:
            raise CollectionError(f"--batch: got {self.batch}; allowed: an integer >= 1")
        if self.max_seeds < len(seeds):
            raise CollectionError(
                f"--max-seeds: got {self.max_seeds}, fewer than the {len(seeds)} seeds given; allowed: an integer "
                f">= {len(seeds)}"
            )


def seeds_of(runs: pd.DataFrame) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """Per configuration: the seeds it has tried (any status), and those it completed."""
    tried: dict[str, set[int]] = {}
    completed: dict[str, set[int]] = {}
    for config, seed, status in zip(runs["config"], runs["seed"].astype(int), runs["status"]):
        tried.setdefault(config, set()).add(seed)
        if status == "completed":
            completed.setdefault(config, set()).add(seed)
    return tried, completed


def next_seeds(
    config: str, baseline: str, tried: dict[str, set[int]], completed: dict[str, set[int]], count: int
) -> list[int]:
    """Up to `count` seeds that would each add a pair to (config, baseline): one side's completed seeds the other
    has not tried, then the smallest seeds neither has tried."""
    mine, theirs = tried.get(config, set()), tried.get(baseline, set())
    done_mine, done_theirs = completed.get(config, set()), completed.get(baseline, set())
    half = sorted((done_mine - theirs) | (done_theirs - mine))
    fresh = (s for s in itertools.count() if s not in mine and s not in theirs)
    return [*half, *itertools.islice(fresh, count)][:count]


def wanted(table: pd.DataFrame, runs: pd.DataFrame, configs: dict[str, Planned], precision: Precision) -> list[Planned]:
    """The runs to add: for each inconclusive contrast between two of this command's configurations with fewer
    than max_seeds pairs (and, with `futility`, within reach of them), the next seeds (at most `batch`, at most
    max_seeds pairs in all) for whichever side lacks them, each run once."""
    tried, completed = seeds_of(runs)
    added: dict[tuple[str, int], Planned] = {}
    for row in table[table["verdict"] == "inconclusive"].itertuples():
        if row.config not in configs or row.baseline not in configs or row.n_pairs >= precision.max_seeds:
            continue
        if precision.futile(int(row.n_pairs), row.seeds_needed):
            continue
        both = tried.get(row.config, set()) | tried.get(row.baseline, set())
        if len(both) >= 2 * precision.max_seeds:  # its runs keep failing: the pairs will not come
            continue
        count = min(precision.batch, precision.max_seeds - int(row.n_pairs))
        versus = f"{changed(row.baseline, row.config)} vs {changed(row.config, row.baseline)}"
        reason = f"until-conclusive: {versus} inconclusive at {int(row.n_pairs)} pairs"
        for seed in next_seeds(row.config, row.baseline, tried, completed, count):
            for side in (row.config, row.baseline):
                if seed not in tried.get(side, set()) and (side, seed) not in added:
                    added[(side, seed)] = Planned(configs[side].overrides, seed, reason)
    return list(added.values())


def carried_over(runs: pd.DataFrame, planned: Sequence[Planned]) -> list[Planned]:
    """The runs an earlier invocation of the same command added (in the ledger, of this command's configurations,
    not among its seeds), with their reasons: planned again, so that one cut off is resumed."""
    configs = {run.config: run for run in planned}
    asked = {(run.config, run.seed) for run in planned}
    return [
        Planned(configs[config].overrides, int(seed), reason)
        for config, seed, reason in zip(runs["config"], runs["seed"].astype(int), runs["reason"])
        if config in configs and (config, int(seed)) not in asked and reason != PLANNED
    ]


def adding_seeds(
    collection: Collection, planned: Sequence[Planned], precision: Precision
) -> Callable[[], list[Planned]]:
    """run_collection's `more`: what the collection's contrasts, as they stand, still need."""
    configs = {run.config: run for run in planned}

    def more() -> list[Planned]:
        table = collection.contrasts()
        return [] if table is None else wanted(table, collection.runs, configs, precision)

    return more

"""What a collection compares its runs by (`--metric`), one number per run, and whether a run had stopped
improving when it ended.

The final round's central accuracy is the default. A run that has not converged, or whose accuracy swings
from round to round, is judged more fairly by the mean of its last K rounds (`last:K`) or of all its rounds
(`mean`); round 0, the untrained model, is never counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from fedsim.collections.plan import CollectionError

CONVERGED_BELOW = 0.002  # a configuration gaining this much central accuracy a round or more is still rising
GAIN_ROUNDS = 5  # the rounds the gain is measured over: the last five
METRICS = "final, last:K (K an integer >= 1) or mean"


@dataclass(frozen=True)
class Metric:
    """`final` (the last round's central accuracy), `last` with `k` (the mean of the last k rounds' central
    accuracy) or `mean` (the mean over every trained round)."""

    kind: str = "final"
    k: int = 0

    @classmethod
    def parse(cls, text: str) -> Metric:
        if text in ("final", "mean"):
            return cls(text)
        match = re.fullmatch(r"last:(\d+)", text)
        if match is None or int(match.group(1)) < 1:
            raise CollectionError(f"--metric: got {text!r}; allowed: {METRICS}")
        return cls("last", int(match.group(1)))

    @property
    def name(self) -> str:
        return f"last:{self.k}" if self.kind == "last" else self.kind

    def of_runs(self, runs: pd.DataFrame, rounds: pd.DataFrame) -> pd.Series:
        """The metric of each run in `runs` (indexed by run_id; NaN where it has none), from runs.csv's
        final_central_accuracy (`final`) or the runs' rounds (the collected rounds.csv, with run_id)."""
        ids = runs["run_id"].astype(int)
        if self.kind == "final":
            return pd.Series(runs["final_central_accuracy"].astype(float).to_numpy(), index=ids.to_numpy())
        trained = rounds[rounds["round"] > 0].dropna(subset=["central_accuracy"]).sort_values(["run_id", "round"])
        per_run = trained.groupby("run_id")["central_accuracy"]
        values = per_run.apply(lambda a: a.iloc[-self.k :].mean()) if self.kind == "last" else per_run.mean()
        return values.reindex(ids.to_numpy()).astype(float)


FINAL = Metric()  # the default: the last round's central accuracy


def gain_per_round(rounds: pd.DataFrame, last: int = GAIN_ROUNDS) -> pd.Series:
    """Each run's central accuracy gained a round over its last `last` rounds: the least-squares slope
    (scipy.stats.linregress) of accuracy on round, indexed by run_id; NaN for a run with fewer than two."""
    trained = rounds[rounds["round"] > 0].dropna(subset=["central_accuracy"]).sort_values(["run_id", "round"])

    def slope(run: pd.DataFrame) -> float:
        tail = run.iloc[-last:]
        if len(tail) < 2:
            return np.nan
        return float(stats.linregress(tail["round"].to_numpy(float), tail["central_accuracy"].to_numpy()).slope)

    return trained.groupby("run_id")[["round", "central_accuracy"]].apply(slope).astype(float)

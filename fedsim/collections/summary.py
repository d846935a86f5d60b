"""summary.csv: per configuration, the metric's mean with a Student-t 95% interval, and whether it was still
rising when its runs ended."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from fedsim.collections.metric import CONVERGED_BELOW, FINAL, Metric, gain_per_round

SUMMARY_COLUMNS = [
    "config",
    "n_runs",
    "n_failed",
    "n_degraded",
    "mean",
    "std",
    "ci95_low",
    "ci95_high",
    "gain_last5_per_round",
    "converged",
    "metric",
]


def mean_interval(values: pd.Series | np.ndarray) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high): the mean with its Student-t 95% interval (scipy.stats.t.interval); std and
    the interval are NaN for fewer than two values, everything for none; equal values have the point as interval."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return (float(values.mean()) if len(values) else np.nan), np.nan, np.nan, np.nan
    mean, std = float(values.mean()), float(values.std(ddof=1))
    if std == 0:  # equal values (e.g. every seed at chance): the interval is the point, not scipy's NaN
        return mean, 0.0, mean, mean
    low, high = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=std / np.sqrt(len(values)))
    return mean, std, float(low), float(high)


def counted(runs: pd.DataFrame, rounds: pd.DataFrame | None, metric: Metric) -> pd.DataFrame:
    """The runs the statistics count, completed ones with a value of `metric`, as (run_id, config, seed, value).

    Degraded runs (some client calls failed) are left out: they did not run the configuration as stated."""
    done = runs[runs.status == "completed"]
    rounds = rounds if rounds is not None else pd.DataFrame(columns=["run_id", "round", "central_accuracy"])
    values = metric.of_runs(done, rounds)
    table = pd.DataFrame(
        {
            "run_id": done["run_id"].astype(int).to_numpy(),
            "config": done["config"].to_numpy(),
            "seed": done["seed"].astype(int).to_numpy(),
            "value": values.to_numpy(),
        }
    )
    return table.dropna(subset=["value"])


def summarize(runs: pd.DataFrame, rounds: pd.DataFrame | None = None, metric: Metric = FINAL) -> pd.DataFrame:
    """Per configuration: the clean completed runs' `metric`, its mean, std and Student-t 95% CI; and the central
    accuracy gained a round over the runs' last five rounds (their mean), `converged` where it is under
    CONVERGED_BELOW (empty without rounds)."""
    values = counted(runs, rounds, metric)
    gains = gain_per_round(rounds) if rounds is not None and len(rounds) else pd.Series(dtype=float)
    rows = []
    for config, group in runs.groupby("config", sort=False):
        mine = values[values.config == config]
        mean, std, low, high = mean_interval(mine["value"])
        gain = gains.reindex(mine["run_id"]).mean() if len(mine) else np.nan
        rows.append(
            {
                "config": config,
                "n_runs": len(mine),
                "n_failed": int((group.status == "failed").sum()),
                "n_degraded": int((group.status == "degraded").sum()),
                "mean": mean,
                "std": std,
                "ci95_low": low,
                "ci95_high": high,
                "gain_last5_per_round": gain,
                "converged": pd.NA if np.isnan(gain) else bool(gain < CONVERGED_BELOW),
                "metric": metric.name,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)

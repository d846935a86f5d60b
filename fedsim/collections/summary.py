"""summary.csv and accuracy.png: per configuration, the metric's mean with a Student-t 95% interval, and whether
it was still rising when its runs ended."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fedsim.collections.metric import CONVERGED_BELOW, FINAL, Metric, gain_per_round
from fedsim.system.files import replaced

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


def plot_accuracy(rounds: pd.DataFrame, runs: pd.DataFrame, path: Path) -> None:
    """Mean central accuracy per round with a Student-t 95% band, one line per configuration."""
    import matplotlib  # only to plot: the ledger, which a run's watchdog imports, loads this module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # only to plot, and after use("Agg")
    from matplotlib.ticker import MaxNLocator  # only to plot

    fig, ax = plt.subplots(figsize=(7, 4.5))
    merged = rounds.merge(runs[["run_id", "config"]], on="run_id")
    for config, group in merged.groupby("config", sort=False):
        per_round = group.groupby("round")["central_accuracy"]
        band = pd.DataFrame(
            [mean_interval(values) for _, values in per_round],
            index=list(per_round.groups),
            columns=["mean", "std", "low", "high"],
        )
        label = f"{config} (n={per_round.count().max()})"
        (line,) = ax.plot(band.index, band["mean"].values, marker="o", markersize=3, label=label)
        ax.fill_between(band.index, band["low"], band["high"], color=line.get_color(), alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("central accuracy")
    name = path.parent.name if len(path.parent.name) <= 60 else path.parent.name[:57] + "..."
    ax.set_title(f"{name}: mean with 95% CI", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with replaced(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)

"""summary.csv and accuracy.png: per configuration, the mean with a Student-t 95% interval."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

SUMMARY_COLUMNS = ["config", "n_runs", "n_failed", "n_degraded", "mean", "std", "ci95_low", "ci95_high"]


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: clean completed runs' final central accuracy, mean, std and a Student-t 95% CI.

    Degraded runs (some client calls failed) are counted in n_degraded and left out of the statistics:
    they did not run the configuration as stated.
    """
    rows = []
    for config, group in runs.groupby("config", sort=False):
        done = group.loc[group.status == "completed", "final_central_accuracy"].astype(float).dropna()
        n = len(done)
        mean = done.mean() if n else np.nan
        std = done.std(ddof=1) if n > 1 else np.nan
        half = stats.t.ppf(0.975, n - 1) * std / np.sqrt(n) if n > 1 else np.nan
        rows.append(
            {
                "config": config,
                "n_runs": n,
                "n_failed": int((group.status == "failed").sum()),
                "n_degraded": int((group.status == "degraded").sum()),
                "mean": mean,
                "std": std,
                "ci95_low": mean - half,
                "ci95_high": mean + half,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def plot_accuracy(rounds: pd.DataFrame, runs: pd.DataFrame, path: Path) -> None:
    """Mean central accuracy per round with a Student-t 95% band, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    merged = rounds.merge(runs[["run_id", "config"]], on="run_id")
    for config, group in merged.groupby("config", sort=False):
        per_round = group.groupby("round")["central_accuracy"]
        mean, std, n = per_round.mean(), per_round.std(ddof=1), per_round.count()
        half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * std / np.sqrt(n)
        (line,) = ax.plot(mean.index, mean.values, marker="o", markersize=3, label=f"{config} (n={n.max()})")
        ax.fill_between(mean.index, mean - half, mean + half, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("central accuracy")
    name = path.parent.name if len(path.parent.name) <= 60 else path.parent.name[:57] + "..."
    ax.set_title(f"{name}: mean with 95% CI", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)

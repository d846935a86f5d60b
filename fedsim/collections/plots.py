"""A collection's pictures, drawn when an invocation ends: accuracy.png (central accuracy per round, a band per
configuration) and contrasts.png (the forest plot of the paired contrasts). matplotlib is imported only to draw:
the ledger, which a Ray job's watchdog imports, loads this module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.collections.contrasts import changed
from fedsim.collections.summary import mean_interval
from fedsim.config.overrides import config_pairs
from fedsim.system.files import replaced


def plot_accuracy(rounds: pd.DataFrame, runs: pd.DataFrame, path: Path) -> None:
    """Mean central accuracy per round with a Student-t 95% band, one line per configuration."""
    import matplotlib  # start-up cost: the ledger, which a Ray job's watchdog imports, loads this module

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


def plot_contrasts(table: pd.DataFrame, path: Path) -> None:
    """The forest plot: each contrast's mean difference with its 95% interval, coloured by verdict, over the band
    of +-margin."""
    import matplotlib  # start-up cost: the ledger, which a Ray job's watchdog imports, loads this module

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # only to plot, and after use("Agg")

    colours = {"worse": "tab:red", "better": "tab:green", "equivalent": "tab:blue", "inconclusive": "tab:gray"}
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.32 * len(table)))
    margin = float(table["margin"].iloc[0])
    ax.axvspan(-margin, margin, color="tab:blue", alpha=0.1, label=f"margin ±{margin:g}")
    ax.axvline(0, color="black", linewidth=0.8)
    for y, row in enumerate(table.itertuples()):
        colour = colours[row.verdict]
        ax.errorbar(
            row.mean_diff,
            y,
            xerr=[[row.mean_diff - row.ci95_low], [row.ci95_high - row.mean_diff]]
            if np.isfinite(row.ci95_low)
            else None,
            fmt="o",
            color=colour,
            capsize=3,
        )
    ax.set_yticks(range(len(table)), labels(table), fontsize=7)
    ax.invert_yaxis()
    for name, colour in colours.items():
        ax.plot([], [], "o", color=colour, label=name)
    ax.set_xlabel(f"paired difference in {table['metric'].iloc[0]} (configuration - baseline), 95% CI")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with replaced(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def labels(table: pd.DataFrame) -> list[str]:
    """Each contrast as `strategy=krum attack=alie vs attack=none`: the configuration by the keys that vary among
    the table's configurations, then what its baseline changes."""
    pairs = [config_pairs(c) for c in pd.concat([table["config"], table["baseline"]])]
    varying = [k for k in dict.fromkeys(k for p in pairs for k in p) if len({p.get(k) for p in pairs}) > 1]
    out = []
    for config, baseline in zip(table["config"], table["baseline"]):
        mine = config_pairs(config)
        shown = " ".join(f"{k}={mine[k]}" for k in varying if k in mine) or config
        out.append(f"{shown} vs {changed(config, baseline)}")
    return out

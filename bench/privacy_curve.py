"""The privacy–accuracy study under Poisson sampling of clients (docs/how-to/privacy.md, "Poisson sampling"):
the cross_device preset with fedsim's fixed-denominator DP-FedAvg at one noise multiplier per ε budget, three
seeds each, as one resumable collection.

    python bench/privacy_curve.py run [--root results/privacy]      # resumable collections: rerun to continue
    python bench/privacy_curve.py report [--root results/privacy]   # the tables (markdown on stdout) and the figure

Each noise multiplier z is the smallest (to 0.01) whose ε after the preset's 100 rounds stays within its budget
(dp-accounting's PLD, δ = 1e-5, q = 0.1). Every round of a run is a point of the curve: rounds.csv's `epsilon`
is what a run stopped there would have spent.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import matplotlib
import pandas as pd
from common import IMDB, ROOT

from fedsim.collections.summary import mean_interval

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend)

SEEDS = ["0", "1", "2"]
BUDGETS = (1, 2, 4, 8)
NOISE = {1: 3.95, 2: 2.25, 4: 1.39, 8: 0.94}  # budget -> z: ε(100 rounds) within it
PRESET = ["experiment=cross_device", "archive.mode=none"]
DP = ["privacy=server_fixed", "privacy.clipping_norm=40"]  # C: the median update norm of round 1 without DP
SWEEP = "privacy.noise_multiplier=" + ",".join(map(str, NOISE.values()))
NAME = "dp_poisson"
FIGURE = ROOT / "docs" / "img" / "privacy-curve.png"


def run(root: str) -> None:
    command = ["run_and_collect.py", "--seeds", *SEEDS, "--name", NAME, "--root", root, "--sweep", SWEEP, "--"]
    command += [*PRESET, "strategy.sampling=poisson", *DP]
    print(" ".join(command), flush=True)
    subprocess.run([sys.executable, *command], cwd=ROOT, check=True, env={**os.environ, "IMDB_PATH": IMDB})


def rounds_of(root: str, name: str) -> pd.DataFrame:
    """Every round of every completed run of a collection, with its seed and noise multiplier."""
    path = ROOT / root / name
    runs = pd.read_csv(path / "runs.csv")
    frames = []
    for run in runs[runs.status == "completed"].itertuples():
        rounds = pd.read_csv(path / run.run_dir / "rounds.csv")
        words = dict(w.split("=", 1) for w in run.overrides.split())
        rounds["seed"], rounds["z"] = run.seed, float(words.get("privacy.noise_multiplier", "nan"))
        frames.append(rounds)
    return pd.concat(frames, ignore_index=True)


def best_within(rounds: pd.DataFrame, budget: float) -> pd.Series | None:
    """The (z, round) point within `budget` whose central accuracy, the mean over the seeds, is highest."""
    points = rounds[(rounds["round"] > 0) & (rounds.epsilon <= budget)]
    if points.empty:
        return None
    means = points.groupby(["z", "round"]).agg(
        epsilon=("epsilon", "first"), accuracy=("central_accuracy", "mean"), seeds=("seed", "nunique")
    )
    means = means[means.seeds == len(SEEDS)]
    return None if means.empty else means.sort_values("accuracy").iloc[-1]


def table(rounds: pd.DataFrame) -> str:
    lines = [
        "| ε ≤ | z | round | ε | central accuracy, seeds 0, 1, 2 | mean | 95% CI |",
        "|---|---|---|---|---|---|---|",
    ]
    for budget in BUDGETS:
        best = best_within(rounds, budget)
        if best is None:
            lines.append(f"| {budget} | – | – | – | (no round within it in all seeds) | | |")
            continue
        z, at = best.name
        values = rounds[(rounds.z == z) & (rounds["round"] == at)].sort_values("seed").central_accuracy
        mean, _, low, high = mean_interval(values.to_numpy())
        seeds = ", ".join(f"{v:.4f}" for v in values)
        lines.append(
            f"| {budget} | {z:g} | {at} | {best.epsilon:.3f} | {seeds} | **{mean:.3f}** | {low:.3f}–{high:.3f} |"
        )
    return "\n".join(lines)


def figure(rounds: pd.DataFrame) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for z, points in rounds[rounds["round"] > 0].groupby("z"):
        curve = points.groupby("round").agg(epsilon=("epsilon", "first"), accuracy=("central_accuracy", "mean"))
        ax.plot(curve.epsilon, curve.accuracy, label=f"z = {z:g}")
    for budget in BUDGETS:
        ax.axvline(budget, color="lightgrey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("ε spent so far (PLD, δ = 1e-5), one point per round")
    ax.set_ylabel("central accuracy, mean of seeds 0, 1, 2")
    ax.set_title("cross_device under Poisson sampling (q = 0.1), fixed-denominator DP-FedAvg, C = 40", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=120)


def report(root: str) -> None:
    rounds = rounds_of(root, NAME)
    print(table(rounds), "\n")
    finals = rounds[rounds["round"] == rounds["round"].max()].groupby("z")
    for z, last in finals:
        print(f"- z = {z:g}, round 100: ε {last.epsilon.iloc[0]:.3f}, accuracy {last.central_accuracy.mean():.4f}")
    runs = pd.read_csv(ROOT / root / NAME / "runs.csv")
    done = runs[runs.status == "completed"]
    print(f"\n{len(done)} of {len(runs)} runs completed; wall time per run {done.wall_time_s.mean():.0f} s (mean)")
    figure(rounds)
    print(f"figure: {FIGURE.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["run", "report"])
    parser.add_argument("--root", default="results/privacy")
    args = parser.parse_args()
    run(args.root) if args.step == "run" else report(args.root)


if __name__ == "__main__":
    main()

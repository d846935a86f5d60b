"""The privacy–accuracy study under Poisson sampling of clients (docs/how-to/privacy.md, "Poisson sampling"):
the cross_device preset with fedsim's fixed-denominator DP-FedAvg at one noise multiplier per ε budget, three
seeds, and beside it one seed of today's fixed-size z = 3.1 run and one of Poisson sampling without DP.

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
# collection name -> (seeds, overrides, sweep or None)
COLLECTIONS = {
    "dp_poisson": (SEEDS, [*PRESET, "strategy.sampling=poisson", *DP], SWEEP),
    "dp_fixed_z3.1": (["0"], [*PRESET, *DP, "privacy.noise_multiplier=3.1"], None),
    "nodp_poisson": (["0"], [*PRESET, "strategy.sampling=poisson"], None),
}  # fmt: skip
FIGURE = ROOT / "docs" / "img" / "privacy-curve.png"


def run(root: str) -> None:
    for name, (seeds, overrides, sweep) in COLLECTIONS.items():
        command = [sys.executable, "run_and_collect.py", "--seeds", *seeds, "--root", root, "--name", name]
        command += ["--sweep", sweep] if sweep else []
        print(" ".join(command[1:] + ["--", *overrides]), flush=True)
        subprocess.run([*command, "--", *overrides], cwd=ROOT, check=True, env={**os.environ, "IMDB_PATH": IMDB})


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


def figure(poisson: pd.DataFrame, fixed: pd.DataFrame, plain: pd.DataFrame) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for z, points in poisson[poisson["round"] > 0].groupby("z"):
        curve = points.groupby("round").agg(epsilon=("epsilon", "first"), accuracy=("central_accuracy", "mean"))
        ax.plot(curve.epsilon, curve.accuracy, label=f"Poisson, z = {z:g} (mean of 3 seeds)")
    fixed = fixed[fixed["round"] > 0]
    ax.plot(fixed.epsilon, fixed.central_accuracy, "k--", label="fixed size, z = 3.1 (seed 0)")
    final = plain[plain["round"] == plain["round"].max()].central_accuracy.iloc[0]
    ax.axhline(final, color="grey", linestyle=":", label=f"no DP, Poisson (seed 0, round 100): {final:.3f}")
    for budget in BUDGETS:
        ax.axvline(budget, color="lightgrey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("ε spent so far (δ = 1e-5; PLD under Poisson, RDP for the fixed-size run)")
    ax.set_ylabel("central accuracy")
    ax.set_title("cross_device: 5,000 clients, q = 0.1, bow 2^16, server-side clipping C = 40")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=120)


def report(root: str) -> None:
    poisson = rounds_of(root, "dp_poisson")
    fixed, plain = rounds_of(root, "dp_fixed_z3.1"), rounds_of(root, "nodp_poisson")
    print(table(poisson), "\n")
    for name, rounds in (("fixed size, z = 3.1, seed 0", fixed), ("Poisson, no DP, seed 0", plain)):
        shown = rounds[rounds["round"].isin([25, 50, 100])]
        cells = ", ".join(
            f"round {r.round}: {r.central_accuracy:.4f}" + (f" at ε {r.epsilon:.2f}" if "epsilon" in shown else "")
            for r in shown.itertuples()
        )
        print(f"- {name}: {cells}")
    figure(poisson, fixed, plain)
    print(f"\nfigure: {FIGURE.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["run", "report"])
    parser.add_argument("--root", default="results/privacy")
    args = parser.parse_args()
    run(args.root) if args.step == "run" else report(args.root)


if __name__ == "__main__":
    main()

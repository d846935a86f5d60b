"""The Byzantine study (docs/benchmarks/byzantine.md): both grids of conf/experiment/byzantine.yaml as resumable
collections, then the tables the docs show.

    python bench/byzantine.py run [--grid main|iid|all] [--root results/byzantine]   # resumable: rerun to continue
    python bench/byzantine.py tables [--root results/byzantine]                      # markdown on stdout

Each grid is five collections, one per way its aggregators are built, each paying its start-up once:
the plain robust strategies swept together, FedAvg (with the weight scrutiny the detectors read, so the detection
AUCs are measured under the aggregator that does not filter), and the three pre-aggregation pairs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import pandas as pd
from common import IMDB, ROOT

from fedsim.collections.summary import mean_interval

SEEDS = ["0", "1", "2"]
ATTACKS = {
    "main": ["none", "label_flip", "sign_flip", "alie", "ipm_small", "ipm_large", "minmax", "minsum", "mimic"],
    "iid": ["none", "alie", "minmax"],
}
PLAIN = ["fedmedian", "trimmed_mean", "krum", "multikrum", "bulyan", "centered_clipping", "geometric_median"]
# collection name -> (its overrides, its --sweep of strategies or None)
COLLECTIONS = {
    "fedavg": (["strategy=fedavg", "scrutiny=true"], None),
    "robust": (["scrutiny=false"], PLAIN),
    "nnm+trimmed_mean": (["strategy=trimmed_mean", "pre=nnm", "scrutiny=false"], None),
    "bucketing+centered_clipping": (["strategy=centered_clipping", "pre=bucketing", "scrutiny=false"], None),
    "arc+trimmed_mean": (["strategy=trimmed_mean", "pre=arc", "scrutiny=false"], None),
}
ORDER = ["fedavg", *PLAIN, "nnm+trimmed_mean", "bucketing+centered_clipping", "arc+trimmed_mean"]
PARTITION = {"main": "partition=dirichlet", "iid": "partition=iid"}


def collection_name(grid: str, name: str) -> str:
    return f"byzantine-{grid}-{name.replace('+', '-')}"


def run(grid: str, root: str) -> None:
    for name, (overrides, strategies) in COLLECTIONS.items():
        command = [sys.executable, "run_and_collect.py", "--seeds", *SEEDS, "--root", root]
        command += ["--name", collection_name(grid, name), "--sweep", f"attack={','.join(ATTACKS[grid])}"]
        if strategies:
            command += ["--sweep", f"strategy={','.join(strategies)}"]
        command += ["--", "experiment=byzantine", PARTITION[grid], *overrides, f"data.path={IMDB}"]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)


def aggregator(overrides: str) -> str:
    words = dict(w.split("=", 1) for w in overrides.split())
    pre = words.get("pre")
    return f"{pre}+{words['strategy']}" if pre else words["strategy"]


def runs_of(grid: str, root: str) -> pd.DataFrame:
    frames = []
    for name in COLLECTIONS:
        path = ROOT / root / collection_name(grid, name)
        if not (path / "runs.csv").exists():  # not run yet: its cells show as missing
            continue
        runs = pd.read_csv(path / "runs.csv")
        runs["collection"] = str(path)
        frames.append(runs)
    runs = pd.concat(frames, ignore_index=True)
    runs["aggregator"] = runs["overrides"].map(aggregator)
    runs["attack"] = runs["overrides"].map(lambda o: dict(w.split("=", 1) for w in o.split())["attack"])
    return runs


def accuracy_table(runs: pd.DataFrame, attacks: list[str]) -> str:
    """Final central accuracy, mean ± the half-width of its 95% Student-t interval over the seeds."""
    lines = ["| aggregator | " + " | ".join(attacks) + " |", "|---|" + "---|" * len(attacks)]
    for name in ORDER:
        cells = []
        for attack in attacks:
            done = runs[(runs.aggregator == name) & (runs.attack == attack) & (runs.status == "completed")]
            values = done["final_central_accuracy"].dropna()
            if len(values) < len(SEEDS):
                cells.append(f"{len(values)}/{len(SEEDS)} runs")
                continue
            mean, _, low, high = mean_interval(values.to_numpy())
            cells.append(f"{mean:.3f} ± {(high - low) / 2:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def detection_table(runs: pd.DataFrame, root: str, grid: str) -> str:
    """Each detector's ROC AUC under FedAvg per attack: the mean over rounds, then over seeds."""
    path = ROOT / root / collection_name(grid, "fedavg")
    detection = pd.read_csv(path / "detection.csv")
    fedavg = runs[runs.collection == str(path)][["run_id", "attack"]]
    merged = detection.merge(fedavg, on="run_id")
    per_run = merged.groupby(["attack", "detector", "run_id"])["auc"].mean().reset_index()
    table = per_run.groupby(["attack", "detector"])["auc"].mean().unstack("detector")
    attacks = [a for a in ATTACKS[grid] if a in table.index]
    detectors = list(table.columns)
    lines = ["| attack | " + " | ".join(detectors) + " |", "|---|" + "---|" * len(detectors)]
    for attack in attacks:
        lines.append(f"| {attack} | " + " | ".join(f"{table.loc[attack, d]:.2f}" for d in detectors) + " |")
    return "\n".join(lines)


def convergence(runs: pd.DataFrame) -> str:
    """FedAvg without an attack: central accuracy by round, the mean over the seeds."""
    clean = runs[(runs.aggregator == "fedavg") & (runs.attack == "none")]
    curves = [pd.read_csv(f"{c}/{d}/rounds.csv").set_index("round")["central_accuracy"] for c, d in
              zip(clean.collection, clean.run_dir)]  # fmt: skip
    mean = pd.concat(curves, axis=1).mean(axis=1)
    shown = [r for r in (1, 5, 10, 15, 18, 19, 20) if r in mean.index]
    return (
        "| round | "
        + " | ".join(map(str, shown))
        + " |\n|---|"
        + "---|" * len(shown)
        + "\n| accuracy | "
        + " | ".join(f"{mean[r]:.3f}" for r in shown)
        + " |"
    )


def tables(root: str) -> None:
    for grid in ATTACKS:
        runs = runs_of(grid, root)
        wall = runs["wall_time_s"].sum() / 60
        print(f"## {grid}: {len(runs)} runs, {int((runs.status == 'completed').sum())} completed, "
              f"{wall:.0f} min of runs\n")  # fmt: skip
        print(accuracy_table(runs, ATTACKS[grid]), "\n")
        print(detection_table(runs, root, grid), "\n")
        print(convergence(runs), "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "tables"])
    parser.add_argument("--grid", choices=["main", "iid", "all"], default="all")
    parser.add_argument("--root", default="results/byzantine", help="where the collections live")
    args = parser.parse_args()
    if args.action == "run":
        for grid in ATTACKS if args.grid == "all" else [args.grid]:
            run(grid, args.root)
    else:
        tables(args.root)


if __name__ == "__main__":
    main()

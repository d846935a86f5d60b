"""Harness vs compute limit: wall time of `python main.py` against a plain PyTorch loop doing the
same local training and evaluation (same partitions, model, batch sizes, threads, central test).

    python bench/overhead.py                      # bow on full IMDB and minilm on a subset
    python bench/overhead.py --only bow -- num_rounds=5

The limit runs in both thread layouts (a single-thread worker per core, or one worker with a thread
per core) and the faster one counts. Ratio = harness / limit over rounds 1..R, over rounds 2..R
(steady state: the harness's round 1 also starts its client actors), and over the whole process
(with start-up: imports, Ray, actors; the limit's worker processes). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from common import MINILM, LimitRun, machine, run_harness, run_limit, table

CASES = {
    "bow": ["model=bow", "num_clients=10", "num_rounds=3"],
    "minilm": MINILM,
}


def fastest_limit(overrides: list[str]) -> tuple[LimitRun, str]:
    """The plain loop in its fastest thread layout on this machine: one single-thread worker per core
    (as the harness's actors), or one worker with a thread per core (as pfl runs)."""
    cores = os.cpu_count() or 1
    layouts = {f"{cores} x 1 thread": (cores, 1), f"1 x {cores} threads": (1, cores)}
    runs = {name: run_limit(overrides, processes, threads) for name, (processes, threads) in layouts.items()}
    for name, run in runs.items():
        print(f"limit, {name}: {run.rounds_s:.1f} s over rounds 1..R", flush=True)
    best = min(runs, key=lambda name: runs[name].rounds_s)
    return runs[best], best


def measure(name: str, overrides: list[str], work: Path) -> dict:
    harness = run_harness(overrides, work / name)
    limit, layout = fastest_limit(overrides)
    fit = harness.clients.groupby("round")["fit_time_s"].sum()
    return {
        "model": name,
        "config": " ".join(overrides),
        "limit layout": layout,
        "harness rounds s": harness.rounds_s,
        "limit rounds s": limit.rounds_s,
        "ratio rounds": harness.rounds_s / limit.rounds_s,
        "ratio rounds 2..R": float(harness.rounds["round_time_s"][2:].sum()) / sum(limit.round_s[1:]),
        "harness wall s": harness.wall_s,
        "limit wall s": limit.wall_s,
        "ratio wall": harness.wall_s / limit.wall_s,
        "harness s by round": " / ".join(f"{t:.1f}" for t in harness.rounds["round_time_s"][1:]),
        "limit s by round": " / ".join(f"{t:.1f}" for t in limit.round_s),
        "harness client fit s/round": float(fit.mean()),
        "limit client fit s/round": sum(limit.fit_s) / len(limit.fit_s),
        "acc harness": harness.final_accuracy,
        "acc limit": limit.final_accuracy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="run only these models")
    parser.add_argument("extra", nargs="*", help="overrides added to every case (after --)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedsim-bench-") as tmp:
        for name in args.only or list(CASES):
            rows.append(measure(name, CASES[name] + args.extra, Path(tmp)))
            print(table(rows[-1:]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()

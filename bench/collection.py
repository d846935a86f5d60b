"""A collection's wall time against its budget (issue 36's target): at most 1.25x the sum of its runs' round times
(rounds.csv's `round_time_s`, every row) plus one run's fixed cost, a solo run's process wall time from launch to
exit minus its round times.

    python bench/collection.py [--runs 20] [--repeats 3] [--jobs N] [--process-per-run] [overrides]
    # default overrides: bow, 10 clients, 3 rounds, 5,000 training reviews; seeds 0..RUNS-1

Each repeat makes one solo run (`python main.py ... seed=0`, for the fixed cost) and then the collection
(`python run_and_collect.py --runs RUNS -- overrides`, timed from launch to exit), and checks that the
collection's run of seed 0 equals the solo run (rounds.csv and clients.csv but timings, memory and Ray's node
id). Prints a Markdown table, one row per repeat, and the median. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import IMDB, ROOT, bench_parser, run_harness, same_results

DEFAULT = ["model=bow", "num_clients=10", "num_rounds=3", "data.train_size=5000"]


def main() -> None:
    parser = bench_parser(__doc__, 20, DEFAULT)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jobs", default="1", help="run_and_collect.py's --jobs (a number, or auto)")
    parser.add_argument("--process-per-run", action="store_true", help="run_and_collect.py's --process-per-run")
    args = parser.parse_args()
    overrides = args.overrides or DEFAULT
    rows = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            solo = run_harness([*overrides, "seed=0"], root / "solo")
            fixed = solo.wall_s - float(solo.rounds["round_time_s"].sum())
            command = [sys.executable, "run_and_collect.py", "--runs", str(args.runs), "--root", str(root)]
            command += ["--name", "c", "--jobs", args.jobs, *(["--process-per-run"] if args.process_per_run else [])]
            began = time.perf_counter()
            done = subprocess.run([*command, "--", f"data.path={IMDB}", *overrides], cwd=ROOT, capture_output=True)
            wall = time.perf_counter() - began
            if done.returncode != 0:
                raise SystemExit(
                    f"the collection exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
                )
            rounds = float(pd.read_csv(root / "c" / "rounds.csv")["round_time_s"].sum())
            budget = 1.25 * rounds + fixed
            rows.append(
                {
                    "repeat": repeat + 1,
                    "wall": wall,
                    "rounds": rounds,
                    "fixed": fixed,
                    "budget": budget,
                    "ratio": wall / budget,
                    "equal": same_results(root / "c" / "runs" / "run_0000", root / "solo"),
                }
            )
            print(rows[-1], file=sys.stderr, flush=True)
    how = "a process per run" if args.process_per_run else "shared runners"
    print(f"`{' '.join(overrides)}`, {args.runs} runs (seeds 0-{args.runs - 1}), --jobs {args.jobs}, {how}\n")
    print(
        "| repeat | collection wall, s | Σ round_time_s | a run's fixed cost, s | budget, s | wall / budget "
        "| run 0 equals its solo run |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['repeat']} | {row['wall']:.1f} | {row['rounds']:.1f} | {row['fixed']:.1f} | {row['budget']:.1f} "
            f"| {row['ratio']:.2f} | {'yes' if row['equal'] else 'no'} |"
        )
    median = {key: statistics.median(r[key] for r in rows) for key in ("wall", "rounds", "fixed", "budget", "ratio")}
    print(
        f"| median | {median['wall']:.1f} | {median['rounds']:.1f} | {median['fixed']:.1f} | {median['budget']:.1f} "
        f"| {median['ratio']:.2f} | |"
    )


if __name__ == "__main__":
    main()

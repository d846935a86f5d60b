"""Scale: 10, 100 and 1000 clients with the same training samples per round (about 1,000 reviews
from 10, 50 and 50 clients), bow, 3 rounds. Reports round time (steady state: rounds 2-3), the
harness's extra time per trained client against the plain loop on the same work, and peak
memory of driver and workers.

    python bench/scale.py
    python bench/scale.py --clients 10 1000 -- num_rounds=5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from common import add_ratios, machine, run_harness, run_limit, table

# num_clients -> (data.train_size, strategy.fraction_train): 80% of each partition trains
# (data.val_fraction 0.2), so every row trains 1,000 reviews per round.
SHAPES = {10: (1250, 1.0), 100: (2500, 0.5), 1000: (25000, 0.05)}


def measure(num_clients: int, extra: list[str], work: Path) -> dict:
    train_size, fraction = SHAPES[num_clients]
    overrides = [
        "model=bow",
        f"num_clients={num_clients}",
        "num_rounds=3",
        f"data.train_size={train_size}",
        "data.test_size=2000",
        f"strategy.fraction_train={fraction}",
        f"strategy.fraction_evaluate={fraction}",
        *extra,
    ]
    harness = run_harness(overrides, work / str(num_clients), sample_memory=True)
    limit = run_limit(overrides)
    # Steady state: rounds 2..R (round 1 of the harness also starts the client actors).
    rounds = harness.rounds[harness.rounds["round"] > 1]
    per_round = float(rounds["num_fit_clients"].mean())
    harness_round, limit_round = float(rounds["round_time_s"].mean()), float(np.mean(limit.round_s[1:]))
    mem = harness.memory
    return {
        "num_clients": num_clients,
        "clients/round": per_round,
        "train rows/round": int(harness.clients.groupby("round")["num_examples"].sum().mean()),
        "harness round 1 s": float(harness.rounds.loc[harness.rounds["round"] == 1, "round_time_s"].iloc[0]),
        "harness s/round": harness_round,
        "limit s/round": limit_round,
        "overhead ms/client": 1000 * (harness_round - limit_round) / per_round,
        "driver peak RSS MB": mem.driver_rss,
        "largest worker peak RSS MB": mem.worker_rss_max,
        "workers peak RSS MB (sum)": mem.workers_rss_sum,
        "all processes peak PSS MB": mem.tree_pss,
        "harness wall s": harness.wall_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("extra", nargs="*", help="overrides added to every run (after --)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedsim-scale-") as tmp:
        for n in args.clients:
            rows.append(measure(n, args.extra, Path(tmp)))
            print(table(rows[-1:]), flush=True)
    if rows[0]["num_clients"] == 10:
        add_ratios(rows, {"driver RSS vs 10": "driver peak RSS MB", "PSS vs 10": "all processes peak PSS MB"})
    print(table(rows))


if __name__ == "__main__":
    main()

"""GPU throughput: the harness against the plain loop on the same GPU, and the best
resources.num_gpus (how many clients share the GPU). Default: distilbert, full IMDB, 10 clients,
1 round. Training samples per second of a round (local training, aggregation, central and
federated evaluation all inside the round's time).

    python bench/gpu.py
    python bench/gpu.py --gpus 1 0.5 -- model.name=/path/to/distilbert num_rounds=2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import machine, run_harness, run_limit, table

BASE = ["model=distilbert", "num_clients=10", "num_rounds=1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=float, nargs="+", default=[1.0, 0.5, 0.25], help="resources.num_gpus values")
    parser.add_argument("extra", nargs="*", help="overrides added to every run (after --)")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    overrides = BASE + args.extra
    limit = run_limit([*overrides, "resources.num_gpus=1"])
    rows = [
        {
            "run": "plain loop, 1 process",
            "round s": limit.round_s[-1],
            "train samples/s": limit.train_examples / limit.round_s[-1],
            "wall s": limit.wall_s,
            "final acc": limit.final_accuracy,
        }
    ]
    print(table(rows), flush=True)
    with tempfile.TemporaryDirectory(prefix="fedsim-gpu-") as tmp:
        for gpus in args.gpus:
            run = run_harness([*overrides, f"resources.num_gpus={gpus}"], Path(tmp) / str(gpus))
            last = run.rounds.iloc[-1]
            examples = run.clients.loc[run.clients["round"] == last["round"], "num_examples"].sum()
            rows.append(
                {
                    "run": f"harness, num_gpus={gpus}",
                    "round s": float(last["round_time_s"]),
                    "train samples/s": examples / float(last["round_time_s"]),
                    "wall s": run.wall_s,
                    "final acc": run.final_accuracy,
                }
            )
            print(table(rows[-1:]), flush=True)
    for row in rows:
        row["vs plain loop"] = row["train samples/s"] / rows[0]["train samples/s"]
    print(table(rows))


if __name__ == "__main__":
    main()

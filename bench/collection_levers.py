"""Which start-up a collection's runs can share, measured before one is built (issue 36, item 2: choose by
measurement). The same runs (seeds 0..N-1) three ways, each run's results compared with the solo run's:

- solo: each run `python main.py` in its own process on its own private Ray instance, as
  run_and_collect.py's local runs are now;
- attached: each run `python main.py ray.address=HEAD` in its own process, every run attached to one Ray
  instance started once for all (`ray.cluster_utils.Cluster`, stopped at the end);
- one process: every run, one after another, in one Python process through `run_experiment`, with Ray
  started by the first run and kept up between runs (`ray.shutdown` a no-op until the last run has
  ended): the driver's imports and Ray's start paid once. The actors still start with each run
  (Flower's backend ends them with its simulation).

    python bench/collection_levers.py [--runs 5] [-- overrides]   # default: bow, 10 clients, 3 rounds, 5,000 reviews

Prints a Markdown table: the wall time of all runs, per run, and whether every run's rounds.csv and
clients.csv equal the solo run's (all columns but timings and memory). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import IMDB, ROOT, bench_parser, run_harness, same_results

DEFAULT = ["model=bow", "num_clients=10", "num_rounds=3", "data.train_size=5000"]

ONE_PROCESS = r"""
import json, sys, time
from pathlib import Path
import ray
from fedsim.config.compose import compose
from fedsim.run.steps import run_experiment
from fedsim.runtimes.simulation import simulate

root, keep_actors, seeds, overrides = Path(sys.argv[1]), sys.argv[2] == "keep", json.loads(sys.argv[3]), sys.argv[4:]
shutdown, ray.shutdown = ray.shutdown, lambda *args, **kwargs: None  # Flower's backend and simulate call it
if keep_actors:
    from flwr.server.superlink.fleet.vce.backend import raybackend

    kept, build = {}, raybackend.RayBackend.build

    def reuse(self, app_fn):
        if "pool" not in kept:
            build(self, app_fn)
            kept["pool"] = self.pool
        self.pool, self.app_fn = kept["pool"], app_fn

    raybackend.RayBackend.build = reuse
    raybackend.RayBackend.terminate = lambda self: None
walls = []
try:
    for seed in seeds:
        began = time.time()
        run_experiment(compose([*overrides, f"seed={seed}"]), root / str(seed), federate=simulate)
        walls.append(time.time() - began)
finally:
    shutdown()
print(json.dumps(walls))
"""


def main() -> None:
    parser = bench_parser(__doc__, 5, DEFAULT)
    args = parser.parse_args()
    overrides = args.overrides or DEFAULT
    seeds = list(range(args.runs))
    walls: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        began = time.time()
        for seed in seeds:
            run_harness([*overrides, f"seed={seed}"], root / "solo" / str(seed))
        walls["solo"] = time.time() - began

        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
        try:
            began = time.time()
            for seed in seeds:
                run_harness(
                    [*overrides, f"seed={seed}", f"ray.address={cluster.address}"], root / "attached" / str(seed)
                )
            walls["attached"] = time.time() - began
        finally:
            cluster.shutdown()

        for how, keep in (("one process", "new"), ("one process, actors kept", "keep")):
            began = time.time()
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    ONE_PROCESS,
                    str(root / how),
                    keep,
                    json.dumps(seeds),
                    f"data.path={IMDB}",
                    *overrides,
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            walls[how] = time.time() - began
            if done.returncode != 0:
                raise SystemExit(f"{how} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")

        print(f"`{' '.join(overrides)}`, seeds 0-{args.runs - 1}\n")
        print("| how | wall, all runs (s) | per run (s) | every run equals its solo run |\n|---|---|---|---|")
        for how, wall in walls.items():
            equal = all(same_results(root / "solo" / str(s), root / how / str(s)) for s in seeds)
            print(f"| {how} | {wall:.1f} | {wall / len(seeds):.1f} | {'yes' if equal else 'no'} |")
        rounds = sum(pd.read_csv(root / "solo" / str(s) / "rounds.csv")["round_time_s"].sum() for s in seeds)
        print(f"\nSum of the solo runs' round_time_s: {rounds:.1f} s")


if __name__ == "__main__":
    main()

"""What an omniscient attack or a robust aggregator adds to a cross-device round (issue 37's target: at most 10%).

    python bench/byzantine_cost.py [--rounds 4] [--configs NAME ...]

Each configuration is `experiment=cross_device` (5,000 clients, 500 training a round, the bow model of 2^16 buckets)
for a few rounds; the figure is the median round_time_s of the rounds after the first, against FedAvg unattacked.
The step itself is timed too, outside the run, on a matrix of that round's shape: 450 honest updates, each
touching the embedding rows of four reviews as a cross-device client's does, held sparse as the server holds them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine, run_harness

from fedsim.byzantine import aggregators, omniscient
from fedsim.byzantine.vectors import sparse_updates

CONFIGS = {
    "fedavg": [],
    "alie": ["attack=alie"],
    "ipm": ["attack=ipm"],
    "minmax": ["attack=minmax"],
    "minsum": ["attack=minsum"],
    "mimic": ["attack=mimic"],
    "centered_clipping": ["strategy=centered_clipping"],
    "geometric_median": ["strategy=geometric_median"],
    "nnm": ["pre=nnm", "assumed_malicious=50"],
    "bucketing": ["pre=bucketing"],
    "arc": ["pre=arc", "assumed_malicious=50"],
}
STEPS = {
    "alie": lambda x: omniscient.alie(x, 1.0),
    "ipm": lambda x: omniscient.ipm(x, 0.1),
    "minmax": lambda x: omniscient.agr_agnostic(x, "std", "minmax"),
    "minsum": lambda x: omniscient.agr_agnostic(x, "std", "minsum"),
    "mimic": lambda x: omniscient.mimic(x, None),
    "centered_clipping": lambda x: aggregators.centered_clipping(x, np.zeros(x.shape[1]), 100.0, 3),
    "geometric_median": lambda x: aggregators.geometric_median(x, 1e-6, 8),
    "nnm": lambda x: aggregators.nnm(x, 50),
    "bucketing": lambda x: aggregators.bucketing(x, 2, np.arange(x.shape[0])),
    "arc": lambda x: aggregators.arc(x, 50),
}


def cross_device_updates(rows: int = 450, buckets: int = 65536, dim: int = 16, touched: int = 600):
    """A round's honest updates as the server holds them: each client changed `touched` embedding rows (its four
    reviews' n-grams) and the whole classifier; a sparse matrix (fedsim.byzantine.vectors), as in the run."""
    rng = np.random.default_rng(0)
    start = [np.zeros((buckets, dim), np.float32), np.zeros((2, dim), np.float32), np.zeros(2, np.float32)]
    replies = []
    for _ in range(rows):
        ids = np.sort(rng.choice(buckets, touched, replace=False))
        replies.append([(ids, rng.normal(0, 0.3, (touched, dim)).astype(np.float32)),
                        (None, rng.normal(0, 0.3, (2, dim)).astype(np.float32)),
                        (None, rng.normal(0, 0.3, 2).astype(np.float32))])  # fmt: skip
    return sparse_updates(replies, start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("overrides", nargs="*", help="more overrides for every run (after --)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    base = None
    print("| configuration | steady s/round | × fedavg | the step alone, s |\n|---|---|---|---|")
    matrix = cross_device_updates()
    for name in args.configs:
        with tempfile.TemporaryDirectory() as tmp:
            run = run_harness(["experiment=cross_device", f"num_rounds={args.rounds}", *CONFIGS[name],
                               *args.overrides], Path(tmp) / "run")  # fmt: skip
        steady = float(run.rounds.query("round >= 2")["round_time_s"].median())
        base = steady if name == "fedavg" else base
        step = ""
        if name in STEPS:
            start = time.perf_counter()
            STEPS[name](matrix)
            step = f"{time.perf_counter() - start:.2f}"
        ratio = f"{steady / base:.2f}" if base else ""
        print(f"| {name} | {steady:.2f} | {ratio} | {step} |", flush=True)


if __name__ == "__main__":
    main()

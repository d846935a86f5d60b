"""Where a run's fixed cost goes: a timeline of `python main.py` from launch to round 1 and from its last round
to the process's exit, every step timed from the launch (issue 36, item 1).

    python bench/startup.py [--runs 3] [-- overrides]     # default: bow, 10 clients, 3 rounds, 5,000 reviews

Each run is `main.py` in a subprocess, started through a bootstrap that wraps the functions that begin and end
each step (fedsim's own, Flower's Ray backend, `ray.init` and `ray.shutdown`) to write a timestamp, and changes
nothing else. The launch is this process's clock just before the subprocess starts; the exit is when it has
ended. Prints a Markdown table: each mark's time from launch, median over the runs (min-max).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import bench_parser, run_harness

DEFAULT = ["model=bow", "num_clients=10", "num_rounds=3", "data.train_size=5000"]

# The bootstrap: marks written as JSON lines to $FEDSIM_TIMELINE, then main.py as `python main.py` runs it.
BOOTSTRAP = r"""
import json, os, runpy, sys, time
out = open(os.environ["FEDSIM_TIMELINE"], "a", buffering=1)
def mark(name):
    out.write(json.dumps({"mark": name, "t": time.time()}) + "\n")
mark("python started, bootstrap runs")
def wrap(owner, name, label):
    inner = getattr(owner, name)
    def timed(*args, **kwargs):
        mark(label + ": begins")
        try:
            return inner(*args, **kwargs)
        finally:
            mark(label + ": ends")
    setattr(owner, name, timed)
import hydra, omegaconf  # main.py's own imports, timed as one step with fedsim's
import fedsim.cli.command, fedsim.run.steps, fedsim.run.session, fedsim.run.experiment, fedsim.server.participation
import fedsim.outputs.phases, fedsim.runtimes.simulation
mark("imports: main.py's modules")
import ray
from flwr.server.superlink.fleet.vce.backend import raybackend
mark("imports: Ray and Flower's simulation")
wrap(fedsim.run.steps, "build", "config checked, strategy built (build)")
wrap(fedsim.run.session.Session, "__init__", "seeded model, disk checked (Session)")
wrap(fedsim.run.session.Session, "prepare", "data step (prepare)")
wrap(fedsim.run.session.Session, "open_outputs", "outputs opened")
wrap(ray, "init", "ray.init")
wrap(raybackend.RayBackend, "build", "Flower's actor pool created")
wrap(fedsim.server.participation.Participants, "discover", "nodes found (first query: actors start)")
wrap(fedsim.run.session.Session, "finish", "outputs finished (final model, run.json)")
wrap(ray, "shutdown", "ray.shutdown")
end_round = fedsim.outputs.phases.Outputs.end_round
def ended(self, record):
    end_round(self, record)
    mark(f"round {record.server_round} recorded")
fedsim.outputs.phases.Outputs.end_round = ended
import atexit
atexit.register(mark, "interpreter exits (atexit)")
sys.argv = ["main.py", *sys.argv[1:]]
sys.path.insert(0, os.getcwd())
runpy.run_path("main.py", run_name="__main__")
"""


def one_run(overrides: list[str], run_dir: Path) -> dict[str, float]:
    """The marks of one run, in seconds from the launch; `process exit` is the process's end."""
    run_dir.mkdir(parents=True)
    timeline = run_dir / "timeline.jsonl"
    os.environ["FEDSIM_TIMELINE"] = str(timeline)  # the bootstrap's, inherited by the run's process alone
    launched = time.time()
    wall_s = run_harness(overrides, run_dir / "run", script=("-c", BOOTSTRAP)).wall_s
    marks: dict[str, float] = {}
    for line in timeline.read_text().splitlines():
        entry = json.loads(line)
        marks.setdefault(entry["mark"], entry["t"] - launched)  # the first time a mark is reached
    marks["process exit"] = wall_s
    return marks


def main() -> None:
    parser = bench_parser(__doc__, 3, DEFAULT)
    args = parser.parse_args()
    overrides = args.overrides or DEFAULT
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for i in range(args.runs):
            runs.append(one_run(overrides, Path(scratch) / str(i)))
    order = sorted(runs[0], key=lambda mark: statistics.median(run.get(mark, float("inf")) for run in runs))
    print(f"`python main.py {' '.join(overrides)}`, {args.runs} runs; seconds from the launch, median (min-max)\n")
    print("| mark | from launch, s |\n|---|---|")
    for mark in order:
        values = [run[mark] for run in runs if mark in run]
        print(f"| {mark} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) |")


if __name__ == "__main__":
    main()

"""Repeat runs over seeds and configurations into one collection:
`python run_and_collect.py --runs 5 [--seeds 3 7 11] [--sweep KEY=A,B] [--name NAME] [--jobs N] [--address URL]
[--process-per-run] [--force] [--baseline KEY=VALUE] [--margin M] [--metric final|last:K|mean]
[--until-conclusive --max-seeds N [--batch B] [--futility]] [-- OVERRIDES]`.
"""

import argparse
import os
import signal
import sys
from pathlib import Path

from fedsim.collections.contrasts import Analysis, Baseline, check_baselines, summary_line
from fedsim.collections.launchers import Launcher, LocalRuns, SharedRunners, stop_runs
from fedsim.collections.ledger import Collection
from fedsim.collections.metric import METRICS, Metric
from fedsim.collections.plan import (
    CollectionError,
    Planned,
    check_plan,
    default_name,
    jobs_that_fit,
    plan,
)
from fedsim.collections.precision import Precision, adding_seeds, carried_over
from fedsim.collections.scheduler import run_collection

MAIN = Path(__file__).resolve().with_name("main.py")


def parse_args(argv: list[str]) -> argparse.Namespace:
    overrides = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].rstrip(":"))
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--runs", type=int, default=1, help="run seeds 0..RUNS-1 (default 1)")
    seeds.add_argument("--seeds", type=int, nargs="+", help="run exactly these seeds")
    parser.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="KEY=A,B,C",
        help="cross these values with the seeds (repeatable: the sweeps are crossed too)",
    )
    parser.add_argument("--name", help="collection name (default: derived from the overrides and sweeps)")
    parser.add_argument("--root", type=Path, default=Path("results/collections"), help="where collections live")
    parser.add_argument(
        "--jobs",
        help="runs at once, each in its own runner or process (default 1; auto: as many as this machine's cores "
        "fit, one core per client actor a run holds; with --address, as many as the cluster's client slots fit)",
    )
    parser.add_argument("--address", help="a Ray cluster's dashboard (http://HEAD:8265): each run a Ray job on it")
    parser.add_argument(
        "--process-per-run",
        action="store_true",
        help="each run a fresh main.py process with its own Ray (default: runners that keep imports, Ray and "
        "the client actors from one run to the next)",
    )
    parser.add_argument("--force", action="store_true", help="rerun completed runs too")
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="compare each configuration with the one that differs from it only in KEY, pair by pair over their "
        "seeds: contrasts.csv and contrasts.png (repeatable: one family of contrasts each)",
    )
    parser.add_argument(
        "--margin", type=float, default=0.02, help="the equivalence margin of the contrasts' verdicts (default 0.02)"
    )
    parser.add_argument("--metric", default="final", help=f"what summary.csv and contrasts.csv compare: {METRICS}")
    parser.add_argument(
        "--until-conclusive",
        action="store_true",
        help="after the given seeds, add seeds only where a contrast is inconclusive, until it is or has --max-seeds",
    )
    parser.add_argument("--max-seeds", type=int, help="with --until-conclusive: the most pairs a contrast gets")
    parser.add_argument("--batch", type=int, default=2, help="with --until-conclusive: seeds added at a time (2)")
    parser.add_argument(
        "--futility",
        action="store_true",
        help="with --until-conclusive: no more seeds for a contrast that, from 5 pairs on, would need more than "
        "--max-seeds to decide",
    )
    args = parser.parse_args(own)
    if args.runs < 1:
        parser.error(f"--runs: got {args.runs}; allowed: an integer >= 1")
    if args.jobs not in (None, "auto"):
        if not args.jobs.isdigit() or int(args.jobs) < 1:
            parser.error(f"--jobs: got {args.jobs}; allowed: an integer >= 1, or auto")
        args.jobs = int(args.jobs)
    args.overrides = overrides
    return args


def launcher_for(args: argparse.Namespace, planned: list[Planned], collection: Collection) -> tuple[Launcher, int]:
    """Runners here (or a process per run), or Ray jobs on the cluster at --address; and how many runs go at
    once."""
    if args.address is None:
        jobs = jobs_that_fit(planned, len(os.sched_getaffinity(0))) if args.jobs == "auto" else args.jobs or 1
        return (LocalRuns() if args.process_per_run else SharedRunners(MAIN)), jobs
    from fedsim.collections.ray_jobs import RayJobs  # Ray only for a collection on a cluster (--address)

    launcher = RayJobs(args.address, collection.path)
    jobs = launcher.plan(planned, None if args.jobs == "auto" else args.jobs)
    launcher.stop_leftovers()
    return launcher, jobs


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    seeds = args.seeds if args.seeds else list(range(args.runs))
    try:
        planned = plan(args.overrides, args.sweep, seeds)
        analysis = Analysis(Metric.parse(args.metric), tuple(map(Baseline.parse, args.baseline)), args.margin)
        check_baselines(list(dict.fromkeys(run.config for run in planned)), analysis.baselines)
        precision = Precision(args.max_seeds, args.batch, args.futility) if args.until_conclusive else None
        if precision is not None:
            precision.check(seeds, analysis.baselines)
        check_plan(planned)  # what main.py would refuse: refused here, before the collection exists
        collection = Collection(args.root / (args.name or default_name(args.overrides, args.sweep)), analysis)
    except CollectionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        launcher, jobs = launcher_for(args, planned, collection)
    except CollectionError as exc:
        collection.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop_runs)
    more = None
    if precision is not None:  # the seeds an earlier invocation added, then those the contrasts still need
        planned += carried_over(collection.runs, planned)
        more = adding_seeds(collection, planned, precision)
    try:
        failed = run_collection(collection, MAIN, planned, force=args.force, jobs=jobs, launcher=launcher, more=more)
        table = collection.contrasts()
        if table is not None:
            print(summary_line(table))
    except KeyboardInterrupt:
        print(
            f"interrupted: the running runs were stopped and recorded; the same command resumes them "
            f"-> {collection.path}",
            file=sys.stderr,
        )
        return 130
    finally:
        collection.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

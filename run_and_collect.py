"""Repeat runs over seeds and configurations into one collection:
`python run_and_collect.py --runs 5 [--seeds 3 7 11] [--sweep KEY=A,B] [--name NAME] [--jobs N] [--address URL]
[--process-per-run] [--force] [-- OVERRIDES]`.
"""

import argparse
import os
import signal
import sys
from pathlib import Path

from fedsim.collections.ledger import Collection
from fedsim.collections.plan import (
    CollectionError,
    Planned,
    check_plan,
    default_name,
    jobs_that_fit,
    plan,
)
from fedsim.collections.runner import Launcher, LocalRuns, SharedRunners, run_collection, stop_runs

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
    try:
        planned = plan(args.overrides, args.sweep, args.seeds if args.seeds else list(range(args.runs)))
        check_plan(planned)  # what main.py would refuse: refused here, before the collection exists
        collection = Collection(args.root / (args.name or default_name(args.overrides, args.sweep)))
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
    try:
        failed = run_collection(collection, MAIN, planned, force=args.force, jobs=jobs, launcher=launcher)
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

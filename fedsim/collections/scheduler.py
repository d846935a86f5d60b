"""Running a collection: what is missing, `--jobs` at a time through a launcher (fedsim.collections.launchers),
recorded in the ledger as each run ends, then what the collection's contrasts still need
(fedsim.collections.precision); Ctrl-C stops the runs, which record themselves interrupted.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np

from fedsim.collections.launchers import Launcher, SharedRunners, activate, stopping
from fedsim.collections.ledger import Collection, finished_unrecorded, resumable, row_of
from fedsim.collections.plan import Planned
from fedsim.run.directory import in_use
from fedsim.rundir import FINISHED, OUTPUT_LOG
from fedsim.system.eta import eta, format_duration


def tracking_labels(collection: str, run_id: int) -> tuple[str, ...]:
    """A fresh run's place in its collection for any tracker: the collection's name as the group (an MLflow
    experiment, a W&B group), and its run_id as a tag."""
    quoted = collection.replace("\\", "\\\\").replace("'", "\\'")
    return f"tracking.group='{quoted}'", f"++tracking.tags.run_id={run_id}"


def execute(launcher: Launcher, main_script: Path, planned: Planned, run_dir: Path, labels: Sequence[str] = ()) -> dict:
    """Run main.py once through `launcher`, continuing a cut-off run from its checkpoint; return its
    row for runs.csv (without run_id). `labels` are overrides a fresh run gets that name no configuration
    (tracking_labels)."""
    if resumable(run_dir):
        command = [sys.executable, str(main_script), f"resume={run_dir}", *launcher.overrides]
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # left by an invocation that failed or was killed before a checkpoint
        run_dir.mkdir(parents=True)
        command = [
            sys.executable,
            str(main_script),
            *planned.overrides,
            f"seed={planned.seed}",
            f"hydra.run.dir='{run_dir}'",
            *labels,
            *launcher.overrides,
        ]
    log = run_dir / OUTPUT_LOG
    log_from, since, started = log.stat().st_size if log.exists() else 0, time.time(), time.perf_counter()
    returncode = launcher.run(command, log, run_dir)
    return row_of(planned, run_dir, returncode, round(time.perf_counter() - started, 3), since, log_from)


def run_collection(
    collection: Collection,
    main_script: Path,
    planned: Sequence[Planned],
    force: bool = False,
    jobs: int = 1,
    echo: Callable[[str], None] = print,
    launcher: Launcher | None = None,
    more: Callable[[], Sequence[Planned]] | None = None,
) -> int:
    """Run what is missing, `jobs` at a time, in shared runners or through another `launcher`; once all of it has
    ended, the runs `more` asks for (fedsim.collections.precision), until it asks for none. Return the number of
    planned runs that are failed."""
    launcher = launcher or SharedRunners(main_script)
    activate(launcher)
    planned = list(planned)
    work = collection.todo(planned, force)
    echo(
        f"collection {collection.path}: {len(planned)} runs planned, {len(planned) - len(work)} already completed, "
        f"{len(work)} to run"
    )
    runnable = ready(collection, work, force, echo)
    started, durations = time.perf_counter(), []

    def start(run_id: int, run: Planned) -> dict:
        collection.record(
            run_id,
            {
                "seed": run.seed,
                "overrides": " ".join(run.overrides),
                "status": "running",
                "config": run.config,
                "reason": run.reason,
            },
        )
        return execute(
            launcher, main_script, run, collection.run_dir(run_id), tracking_labels(collection.path.name, run_id)
        )

    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            pending: dict[Future, tuple[int, Planned, float]] = {}
            queue = list(runnable)
            done_count = 0

            def fill() -> None:
                while queue and len(pending) < max(1, jobs) and not stopping():
                    run_id, run = queue.pop(0)
                    pending[pool.submit(start, run_id, run)] = (run_id, run, time.perf_counter())

            while queue or pending:
                if stopping():
                    queue.clear()
                fill()
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                ended = [(*pending.pop(future), future.result()) for future in finished]
                fill()  # the next runs start before the ended ones' books are written
                for run_id, run, began, row in ended:
                    collection.record(run_id, row)
                    durations.append(time.perf_counter() - began)
                    done_count += 1
                    echo(progress_line(done_count, len(runnable), run_id, run, row, durations, jobs))
                if not queue and not pending and more is not None and not stopping():
                    extra = list(more())  # every run so far has ended and is in the ledger
                    planned += extra
                    added = ready(collection, collection.todo(extra, force=False), force, echo)
                    runnable += added
                    queue += added
    finally:
        launcher.close()  # idle runners end, Ray with them
    collection.rebuild()  # the pool is done; this also updates a collection written by an older fedsim
    if stopping():
        raise KeyboardInterrupt
    ids = {(r.config, r.seed) for r in planned}
    mine = collection.runs[
        np.array([(c, int(s)) in ids for c, s in zip(collection.runs.config, collection.runs.seed)], dtype=bool)
    ]
    failed = int((mine.status == "failed").sum())
    echo(
        f"done in {format_duration(time.perf_counter() - started)}: {int((mine.status == 'completed').sum())} "
        f"completed, {int((mine.status == 'degraded').sum())} degraded, {failed} failed -> {collection.path}"
    )
    return failed


def ready(
    collection: Collection, work: Sequence[tuple[int, Planned]], force: bool, echo: Callable[[str], None]
) -> list[tuple[int, Planned]]:
    """Of `work`, the runs to start: a run an earlier invocation left `running` that finished all the same is
    recorded instead, and one whose directory a live run still holds is left for the next invocation."""
    runnable = []
    recorded = dict(zip(collection.runs.run_id.astype(int), collection.runs.status))
    for run_id, run in work:
        if not force and recorded.get(run_id) == "running" and finished_unrecorded(collection.run_dir(run_id)):
            collection.record(run_id, row_of(run, collection.run_dir(run_id), 0, None))
            echo(f"[done] run {run_id}  seed={run.seed}  {run.config}: finished as the last invocation stopped")
            continue
        owner = in_use(collection.run_dir(run_id))
        if owner is not None:  # e.g. an earlier invocation's run, still recording itself interrupted
            echo(
                f"[busy] run {run_id}  seed={run.seed}  {run.config}: its directory is in use by a live run "
                f"({owner}); left as it is: run the same command again once that run has ended"
            )
            continue
        runnable.append((run_id, run))
    return runnable


def progress_line(
    count: int, total: int, run_id: int, run: Planned, row: dict, durations: list[float], jobs: int
) -> str:
    """`[3/20] run 2  seed=1  CONFIG  acc 0.8120  21s  ETA 6m`, or the run's error."""
    if row["status"] in FINISHED:
        degraded = " (degraded: some client calls failed)" if row["status"] == "degraded" else ""
        outcome = f"acc {row['final_central_accuracy']:.4f}{degraded}"
    else:
        outcome = f"FAILED: {row['error']}"
    left = total - count
    return (
        f"[{count}/{total}] run {run_id}  seed={run.seed}  {run.config}  {outcome}  "
        f"{format_duration(durations[-1])}  ETA {eta(sum(durations), len(durations), left, jobs)}"
    )

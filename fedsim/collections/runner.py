"""Running a collection: what is missing, `--jobs` at a time, recorded in the ledger as each run ends; Ctrl-C
stops the runs, which record themselves interrupted.

Where the runs execute is a Launcher: `SharedRunners` (the default) hands each run to a long-lived runner
process that keeps the driver's imports, Ray and the client actors from one run to the next
(fedsim.cli.runner); `LocalRuns` starts a fresh main.py process per run; fedsim.collections.ray_jobs.RayJobs
submits each run as a Ray job to a cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol

import numpy as np

from fedsim.collections.ledger import Collection, finished_unrecorded, resumable, row_of
from fedsim.collections.plan import Planned
from fedsim.run.directory import in_use
from fedsim.system.eta import eta, format_duration
from fedsim.system.liveness import FINISHED
from fedsim.system.processes import Processes, child_env, die_with_parent
from fedsim.system.waits import wait_until

RUNNER_EXIT_S = 30.0  # how long a runner told to end may take (it kills its Ray processes) before it is killed


class LocalRuns:
    """Each run a child process of this one that dies with it, even when this one is killed with -9."""

    overrides: tuple[str, ...] = ()  # added to every fresh run's command (none: a private Ray instance)

    def __init__(self) -> None:
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def run(self, command: list[str], log_path: Path, run_dir: Path) -> int:
        """Run `command` to its end, its output into `log_path`; its exit status (negative: killed by a signal)."""
        with open(log_path, "a") as log:
            child = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=child_env(), preexec_fn=die_with_parent
            )
        with self._lock:
            self._children.add(child)
            if _STOPPING.is_set():  # started just as the collection was asked to stop
                child.send_signal(signal.SIGINT)
        try:
            return child.wait()
        finally:
            with self._lock:
                self._children.discard(child)

    def stop(self) -> None:
        """Ask every running main.py to stop: each records itself `interrupted` and exits within seconds."""
        with self._lock:
            for child in self._children:
                if child.poll() is None:
                    child.send_signal(signal.SIGINT)

    def close(self) -> None:
        """Nothing outlives a run."""


class _Runner:
    """One runner process (fedsim.cli.runner) in a session of its own with Ray's processes: run after run handed
    over on its stdin, each answered on a pipe when it has completed; a run that does not complete ends the
    process with main.py's exit status, and whatever it started is stopped with its session."""

    def __init__(self, main_script: Path, log_path: Path) -> None:
        replies, reply_end = os.pipe()
        self.processes = Processes()
        self.child = self.processes.start(
            "runner",
            [sys.executable, "-m", "fedsim.cli.runner", str(main_script), str(reply_end)],
            log=log_path,  # until the first run's output goes to its own log: the runner's start-up
            stdin=subprocess.PIPE,
            pass_fds=(reply_end,),
            preexec_fn=die_with_parent,
        )
        os.close(reply_end)
        self.replies = os.fdopen(replies)

    @property
    def process(self) -> subprocess.Popen:
        return self.child.process

    def run(self, argv: Sequence[str], log_path: Path, run_dir: Path) -> int:
        """Hand over one run; 0 once it has completed, else the runner's exit status (negative: a signal)."""
        request = {"argv": list(argv), "log": str(log_path), "run_dir": str(run_dir)}
        try:
            self.process.stdin.write(f"{json.dumps(request)}\n".encode())
            self.process.stdin.flush()
        except BrokenPipeError:  # it died idle (killed): the run never began here
            return self.process.wait()
        if self.replies.readline():
            return 0
        return self.process.wait()  # the reply pipe closed: the runner ended with the run

    def close(self) -> None:
        """End the runner: its stdin closed (an idle runner then leaves, killing its Ray processes), and once it
        has exited, or has not within RUNNER_EXIT_S, its session stopped (what a killed runner left)."""
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        wait_until(lambda: self.process.poll() is not None, timeout_s=RUNNER_EXIT_S)
        self.processes.stop_all()
        self.replies.close()


class SharedRunners:
    """Each run made by a runner process that keeps the driver's imports, Ray and the client actors from one
    run to the next (fedsim.cli.runner); as many runners as runs go at once. A run that does not complete ends
    its runner; the next run gets a fresh one. Every run's results are bitwise those of the same run alone."""

    overrides: tuple[str, ...] = ()

    def __init__(self, main_script: Path) -> None:
        self.main_script = main_script
        self._idle: list[_Runner] = []
        self._busy: set[_Runner] = set()
        self._lock = threading.Lock()

    def run(self, command: list[str], log_path: Path, run_dir: Path) -> int:
        """Run `command` (`python MAIN_PY ARGS`) in an idle runner, or a new one."""
        if command[:2] != [sys.executable, str(self.main_script)]:
            raise ValueError(f"a runner runs {self.main_script}, not {command[:2]}")
        with self._lock:
            if _STOPPING.is_set():  # asked to stop before this run began: it ends as main.py would, interrupted
                return 128 + signal.SIGINT
            runner = self._idle.pop() if self._idle else _Runner(self.main_script, log_path)
            self._busy.add(runner)
        code = runner.run(command[2:], log_path, run_dir)
        with self._lock:
            self._busy.discard(runner)
            if code == 0 and not _STOPPING.is_set():
                self._idle.append(runner)
                runner = None
        if runner is not None:
            runner.close()
        return code

    def stop(self) -> None:
        """Ask every running run to stop: each records itself `interrupted`, and its runner exits."""
        with self._lock:
            for runner in self._busy:
                if runner.process.poll() is None:
                    runner.process.send_signal(signal.SIGINT)

    def close(self) -> None:
        """End every idle runner, and its Ray with it."""
        with self._lock:
            idle, self._idle = self._idle, []
        for runner in idle:
            runner.close()


class Launcher(Protocol):
    """Where a collection's runs execute: SharedRunners, LocalRuns, or fedsim.collections.ray_jobs.RayJobs on a
    Ray cluster."""

    overrides: tuple[str, ...]

    def run(self, command: list[str], log_path: Path, run_dir: Path) -> int: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


_STOPPING = threading.Event()


_ACTIVE: list[Launcher] = []  # the launcher of the collection running in this process


def stop_runs(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM: ask every running main.py to stop (each records itself `interrupted` and exits
    within seconds) and start no more."""
    _STOPPING.set()
    for launcher in _ACTIVE:
        launcher.stop()


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
    log = run_dir / "output.log"
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
) -> int:
    """Run what is missing, `jobs` at a time, in shared runners or through another `launcher`; return the
    number of planned runs that are failed."""
    launcher = launcher or SharedRunners(main_script)
    _ACTIVE[:] = [launcher]
    work = collection.todo(planned, force)
    skipped = len(planned) - len(work)
    echo(f"collection {collection.path}: {len(planned)} runs planned, {skipped} already completed, {len(work)} to run")
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

    started, durations = time.perf_counter(), []

    def start(run_id: int, run: Planned) -> dict:
        collection.record(
            run_id, {"seed": run.seed, "overrides": " ".join(run.overrides), "status": "running", "config": run.config}
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
                while queue and len(pending) < max(1, jobs) and not _STOPPING.is_set():
                    run_id, run = queue.pop(0)
                    pending[pool.submit(start, run_id, run)] = (run_id, run, time.perf_counter())

            while queue or pending:
                if _STOPPING.is_set():
                    queue.clear()
                fill()
                finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                ended = [(*pending.pop(future), future.result()) for future in finished]
                fill()  # the next runs start before the ended ones' books are written
                for run_id, run, began, row in ended:
                    collection.record(run_id, row)
                    durations.append(time.perf_counter() - began)
                    done_count += 1
                    left = len(runnable) - done_count
                    outcome = (
                        f"acc {row['final_central_accuracy']:.4f}"
                        + (" (degraded: some client calls failed)" if row["status"] == "degraded" else "")
                        if row["status"] in FINISHED
                        else f"FAILED: {row['error']}"
                    )
                    echo(
                        f"[{done_count}/{len(runnable)}] run {run_id}  seed={run.seed}  {run.config}  {outcome}  "
                        f"{format_duration(durations[-1])}  ETA {eta(sum(durations), len(durations), left, jobs)}"
                    )
    finally:
        launcher.close()  # idle runners end, Ray with them
    collection.rebuild()  # the pool is done; this also updates a collection written by an older fedsim
    if _STOPPING.is_set():
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

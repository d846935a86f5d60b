"""Where a collection's runs execute (a Launcher): `SharedRunners` (the default) hands each run to a long-lived
runner process that keeps the driver's imports, Ray and the client actors from one run to the next
(fedsim.cli.warm_runner); `LocalRuns` starts a fresh main.py process per run; fedsim.collections.ray_jobs.RayJobs
submits each run as a Ray job to a cluster. Ctrl-C (`stop_runs`) asks every running run to stop.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

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
    """One runner process (fedsim.cli.warm_runner) in a session of its own with Ray's processes: run after run handed
    over on its stdin, each answered on a pipe when it has completed; a run that does not complete ends the
    process with main.py's exit status, and whatever it started is stopped with its session."""

    def __init__(self, main_script: Path, log_path: Path) -> None:
        replies, reply_end = os.pipe()
        self.processes = Processes()
        self.child = self.processes.start(
            "runner",
            [sys.executable, "-m", "fedsim.cli.warm_runner", str(main_script), str(reply_end)],
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
    run to the next (fedsim.cli.warm_runner); as many runners as runs go at once. A run that does not complete ends
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


def activate(launcher: Launcher) -> None:
    """`launcher` is the one `stop_runs` stops: the collection running in this process."""
    _ACTIVE[:] = [launcher]


def stopping() -> bool:
    """Whether the collection was asked to stop (Ctrl-C, SIGTERM): start no more runs."""
    return _STOPPING.is_set()


def stop_runs(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM: ask every running main.py to stop (each records itself `interrupted` and exits
    within seconds) and start no more."""
    _STOPPING.set()
    for launcher in _ACTIVE:
        launcher.stop()

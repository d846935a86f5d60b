"""Child processes that are always stopped: each starts in its own session (so a terminal's Ctrl-C
reaches only the parent, which stops them in order), and is stopped with its process group and
every process it spawned: Flower's SuperLink starts its SuperExec (and through it the ServerApp)
in a session of their own, out of reach of the group.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from fedsim.system.waits import wait_until


def scripts_dir() -> str:
    """The folder of this interpreter's console scripts (a venv's bin/): where pip put flwr, flower-superlink,
    ray. Not resolved: a venv's python is a link to the base interpreter, whose folder lacks them."""
    return str(Path(sys.executable).parent)


def child_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of every process fedsim starts: `base` (this process's environment) and `extra`, with
    this interpreter's scripts folder first on PATH. Flower's SuperLink and SuperNode start their SuperExec
    and apps by name, so a run started as /path/to/venv/bin/python with the venv off PATH (cron, a job script,
    an IDE) must find them there, not some other Flower or none."""
    env = {**(os.environ if base is None else base), **extra}
    rest = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != scripts_dir()]
    env["PATH"] = os.pathsep.join([scripts_dir(), *rest])
    return env


def command(name: str) -> str:
    """A console script by name, as a process fedsim starts finds it (child_env's PATH); FileNotFoundError
    with one line when it is installed nowhere."""
    found = shutil.which(name, path=child_env()["PATH"])
    if found is None:
        raise FileNotFoundError(
            f"{name}: no such command beside {sys.executable} or on PATH (install the project "
            "into this environment: pip install -e .)"
        )
    return found


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 200) -> list[str]:
        if not self.log.exists():
            return []
        return self.log.read_text(errors="replace").splitlines()[-lines:]


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """From now on this process gets `signum` when its parent dies, even by -9 (Linux's PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signum)


def adopt_orphans() -> None:
    """From now on the processes below this one whose parent dies become this one's children, not init's
    (Linux's PR_SET_CHILD_SUBREAPER), so that `kill_descendants` still finds them."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is left (zombies, dead but not yet reaped, do not count)."""
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def started_at(pid: int) -> float | None:
    """When process `pid` started, or None if it is gone or a zombie: with its pid, it names one process, not
    a later one given the same pid."""
    try:
        process = psutil.Process(pid)
        return None if process.status() == psutil.STATUS_ZOMBIE else process.create_time()
    except psutil.NoSuchProcess:
        return None


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, however detached (a new session keeps its parent)."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_descendants() -> None:
    """SIGKILL every process below this one (Ray's head processes and workers, a deployment's leftovers), for a
    process about to leave with os._exit: nothing it started outlives it, not even the agents that Ray's
    processes only notice a minute later are orphaned."""
    for pid in descendants(os.getpid()):
        _send(os.kill, pid, signal.SIGKILL)


def _send(kill, target: int, sig: int) -> None:
    try:
        kill(target, sig)
    except ProcessLookupError:
        pass


class Processes:
    """The processes one command started, stopped together (newest first) by `stop_all`."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        pipe: bool = False,
        stdin: int = subprocess.DEVNULL,
        pass_fds: Sequence[int] = (),
        preexec_fn: Callable[[], None] | None = None,
    ) -> Child:
        """Start `argv` in a new session, its stdout and stderr to `log`, or with `pipe` to `process.stdout`
        (text) for the caller to read (and log); `env` (default: this process's) as child_env makes it;
        `stdin`, `pass_fds` and `preexec_fn` as subprocess.Popen takes them."""
        with open(log, "ab") as out:
            process = subprocess.Popen(
                list(argv),
                stdout=subprocess.PIPE if pipe else out,
                stderr=subprocess.STDOUT,
                stdin=stdin,
                env=child_env(env),
                cwd=cwd,
                text=pipe,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
                preexec_fn=preexec_fn,
            )
        child = Child(name, process, log)
        self.children.append(child)
        return child

    def stop(self, child: Child, grace_s: float = 10.0) -> None:
        """SIGTERM to the child's group and to every process below it, SIGKILL to what is left after `grace_s`."""
        tree = {child.pid, *descendants(child.pid)}

        def gone() -> bool:
            child.process.poll()  # reap the leader, so that a finished group reads as gone
            return not self._running(child, tree)

        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            tree |= set(descendants(child.pid))
            _send(os.killpg, child.pid, sig)
            for pid in tree - {child.pid}:
                _send(os.kill, pid, sig)
            if wait_until(gone, timeout_s=wait_s, poll_s=0.1):  # not gone at the deadline: the next signal
                return

    @staticmethod
    def _running(child: Child, tree: set[int]) -> bool:
        return group_alive(child.pid) or any(alive(p) for p in tree - {child.pid})  # a dead leader's group too

    def stop_all(self) -> None:
        for child in reversed(self.children):
            self.stop(child)

    def left(self) -> list[int]:
        """Processes this command started (or they spawned) that still run."""
        pids = {c.pid for c in self.children if c.process.poll() is None}
        for child in self.children:
            pids |= {p for p in descendants(child.pid) if alive(p)}
        return sorted(pids)


def node_name() -> str:
    """The Ray node running this process (its node id), or the host outside Ray (Flower's deployment runtime).
    Ray is looked up, never imported: a process that has not imported it runs outside Ray."""
    ray: Any = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()

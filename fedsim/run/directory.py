"""A run directory is owned by one run at a time.

The owner holds an exclusive lock on RUN/.lock (its pid written inside) for as long as it lives; the
kernel drops the lock when the process ends, even by kill -9, so a dead owner never blocks. A second
run into the same directory is refused in one line naming the owner's pid, and a directory that holds
a finished or stopped run is refused unless the user asks to replace it (`overwrite=true`), the line
naming `resume=` where the run can continue. `python main.py` claims its directory before Hydra writes
into it (RunDirectoryGuard), a plain `flwr run` ServerApp claims its own, and under `runtime=deployment`
main.py owns the directory its ServerApp writes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from fedsim.rundir import CHECKPOINT, FINISHED, config_path, effective_status, read_info
from fedsim.system.errors import ConfigError

LOCK = ".lock"


KEY = "hydra.run.dir"


_HELD: dict[Path, IO[str]] = {}  # the directories this process owns, with their open lock files


def owner_of(run_dir: Path) -> int | None:
    """The pid written in a run directory's lock file (its last owner, live or not)."""
    try:
        return int((Path(run_dir) / LOCK).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def in_use(run_dir: Path, probe_lock: bool = True) -> str | None:
    """Which live run owns `run_dir` (`pid N`, `pid N on HOST`), or None; this process's own claim aside."""
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        return None
    if probe_lock and (run_dir / LOCK).exists():
        with open(run_dir / LOCK, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return f"pid {owner_of(run_dir)}"
    info = read_info(run_dir)  # a run on another host, or by an older fedsim, that holds no lock here
    if info is not None and effective_status(info) == "running":
        return f"pid {info.get('pid')} on {info.get('host')}"
    return None


def claim(run_dir: Path, *, resume: bool = False, overwrite: bool = False, keep: Sequence[str] = ()) -> None:
    """Make this process the owner of `run_dir` (made if missing), or raise ConfigError (hydra.run.dir).

    A fresh run (`resume` false) into a directory that holds a run (its run.json and config.yaml: a run
    refused for bad input has no config.yaml and is simply replaced) is refused, unless `overwrite`: then
    the old run's files are removed first, all but the lock and `keep` (files this run's Hydra has written
    there already). A refusal changes nothing in the directory. Claiming a directory this process owns
    already does nothing.
    """
    run_dir = Path(run_dir).resolve()
    if run_dir in _HELD:
        return
    check(run_dir, resume, overwrite)  # before the lock file is made: a refused directory stays as it was
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = open(run_dir / LOCK, "a+")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                KEY,
                f"{run_dir} is in use by a live run (pid {owner_of(run_dir)}); allowed: another "
                "directory, or wait for that run to end",
            ) from None
        check(run_dir, resume, overwrite, locked=True)  # again, now that no other run can start here
        if overwrite and not resume and read_info(run_dir) is not None:
            clear(run_dir, keep)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
    except BaseException:
        lock.close()
        raise
    _HELD[run_dir] = lock


def check(run_dir: Path, resume: bool, overwrite: bool, locked: bool = False) -> None:
    """ConfigError for a directory a live run owns, or (unless resuming or overwriting) one that holds a run;
    `locked`: this process holds the directory's lock already (only run.json can name another owner)."""
    owner = in_use(run_dir, probe_lock=not locked)
    if owner is not None:
        raise ConfigError(
            KEY, f"{run_dir} is in use by a live run ({owner}); allowed: another directory, or wait for that run to end"
        )
    info = read_info(run_dir)
    if info is not None and config_path(run_dir).exists() and not resume and not overwrite:
        raise refused(run_dir, info)


def refused(run_dir: Path, info: Mapping[str, Any]) -> ConfigError:
    """The one line for a fresh run into a directory that holds another run."""
    status, done = effective_status(info), int(info.get("rounds_completed") or 0)
    ways = ["another directory", "overwrite=true to replace it"]
    if config_path(run_dir).exists() and (run_dir / CHECKPOINT).exists():
        ways.append(
            f"resume={run_dir} num_rounds=MORE to continue it"
            if status in FINISHED
            else f"resume={run_dir} to continue it"
        )
    return ConfigError(KEY, f"{run_dir} holds a run ({status}, {done} rounds); allowed: {', '.join(ways)}")


def clear(run_dir: Path, keep: Sequence[str] = ()) -> None:
    """Remove an old run's files from its directory (`overwrite=true`), all but the lock and `keep`."""
    for entry in run_dir.iterdir():
        if entry.name in (LOCK, *keep):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def release(run_dir: Path) -> None:
    """Give up a directory this process owns (its lock file stays, naming the last owner)."""
    lock = _HELD.pop(Path(run_dir).resolve(), None)
    if lock is not None:
        lock.close()


class RunDirectoryGuard(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): `python main.py` claims its run directory before
    Hydra writes its .hydra/ and main.log there, so a refused run leaves the directory as it was."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            claim(
                Path(config.hydra.run.dir),
                resume=config.get("resume") is not None,
                overwrite=bool(config.get("overwrite", False)),
            )
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)

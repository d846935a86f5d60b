"""Collections: one experiment repeated over seeds and configurations, each run in its own process,
gathered into tidy CSVs that survive a kill at any moment.

A collection directory holds runs.csv (the ledger: one row per run_id), runs/run_NNNN/ (each run's
own directory, written by main.py), the concatenated rounds/clients/layers CSVs, summary.csv and
accuracy.png. Every file is replaced atomically, so a reader never sees half of one.
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from fedsim.liveness import FINISHED, effective_status
from fedsim.outputs import CHECKPOINT, format_duration, write_csv
from fedsim.processes import child_env
from fedsim.rundir import in_use

RUNS_COLUMNS = [
    "run_id", "seed", "overrides", "status", "error", "final_central_accuracy", "best_central_accuracy",
    "wall_time_s", "run_dir", "config",
]
SUMMARY_COLUMNS = ["config", "n_runs", "n_failed", "n_degraded", "mean", "std", "ci95_low", "ci95_high"]
COLLECTED = ("rounds.csv", "clients.csv", "layers.csv", "detection.csv")
DEFAULT_CONFIG = "defaults"


class CollectionError(Exception):
    """Bad command-line input for a collection, reported as one line before anything runs."""


@dataclass(frozen=True)
class Planned:
    """One run to have: a configuration (Hydra overrides, without the seed) and a seed."""

    overrides: tuple[str, ...]
    seed: int

    @property
    def config(self) -> str:
        return " ".join(self.overrides) or DEFAULT_CONFIG


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """`KEY=A,B,C` -> (KEY, [A, B, C]), read by Hydra's override parser: list values and quoting mean what they
    mean to main.py (`archive.layers=[embedding.*],[fc.*]` is two lists)."""
    from fedsim.errors import ConfigError
    from fedsim.overrides import parse, values

    key, sep, rest = text.partition("=")
    if not sep or not key or not rest:
        raise CollectionError(f"--sweep: got {text!r}; expected KEY=A,B,C")
    try:
        [override] = parse([text])
    except ConfigError as exc:
        raise CollectionError(f"--sweep: {exc}") from None
    return override.key_or_group, values(override)


def configurations(overrides: Sequence[str], sweeps: Sequence[str]) -> list[tuple[str, ...]]:
    """The cross product of the sweeps, each with the shared overrides in front."""
    for override in overrides:
        if override.split("=", 1)[0].lstrip("+~") == "seed":
            raise CollectionError(f"seed: given as an override ({override}); choose seeds with --runs or --seeds")
    axes = [[f"{key}={value}" for value in values] for key, values in map(parse_sweep, sweeps)]
    return [tuple(overrides) + combo for combo in itertools.product(*axes)]


def plan(overrides: Sequence[str], sweeps: Sequence[str], seeds: Sequence[int]) -> list[Planned]:
    """Seeds outermost, so an unfinished collection already compares every configuration."""
    if len(set(seeds)) != len(seeds):
        raise CollectionError(f"--seeds: {list(seeds)} repeats a seed")
    return [Planned(config, seed) for seed in seeds for config in configurations(overrides, sweeps)]


def default_name(overrides: Sequence[str], sweeps: Sequence[str]) -> str:
    """A folder name from the overrides and sweeps, e.g. `num_rounds=3_strategy=fedavg,fedmedian`."""
    name = re.sub(r"[^A-Za-z0-9._=,+-]+", "-", "_".join([*overrides, *sweeps])).strip("-_.")
    return name[:120] or "default"


def check_plan(planned: Sequence[Planned]) -> None:
    """Refuse, before anything is created, a configuration main.py would refuse at once: its overrides
    (fedsim.overrides) and their values (fedsim.build), as main.py checks them. A CollectionError naming the
    configuration; what only the data can tell (a partition too small) is found by the run, and recorded."""
    from fedsim.build import build
    from fedsim.errors import ConfigError
    from fedsim.overrides import check

    for config in dict.fromkeys(run.overrides for run in planned):
        seed = next(run.seed for run in planned if run.overrides == config)
        try:
            build(check([*config, f"seed={seed}"]))
        except ConfigError as exc:
            where = f" (in {' '.join(config)})" if config else ""
            raise CollectionError(f"{exc}{where}") from None


def die_with_parent() -> None:
    """Runs in the child before exec: if run_and_collect is killed (even with -9), its run stops too."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _error_from(run_dir: Path, returncode: int) -> str:
    """The last line of a failed run's error: run.json's, else the log's, else the exit status."""
    info_path = run_dir / "run.json"
    if info_path.exists():
        error = json.loads(info_path.read_text()).get("error")
        if error:
            return error
    log = run_dir / "output.log"
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()] if log.exists() else []
    lines = [line for line in lines if line and "HYDRA_FULL_ERROR" not in line]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return lines[-1] if lines else f"exit status {returncode}"


class LocalRuns:
    """Each run a child process of this one that dies with it, even when this one is killed with -9."""

    overrides: tuple[str, ...] = ()  # added to every fresh run's command (none: a private Ray instance)

    def __init__(self) -> None:
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def run(self, command: list[str], log_path: Path, run_dir: Path) -> int:
        """Run `command` to its end, its output into `log_path`; its exit status (negative: killed by a signal)."""
        with open(log_path, "a") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                     preexec_fn=die_with_parent)
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


class Launcher(Protocol):
    """Where a collection's runs execute: LocalRuns, or fedsim.cluster_jobs.RayJobs on a Ray cluster."""

    overrides: tuple[str, ...]

    def run(self, command: list[str], log_path: Path, run_dir: Path) -> int: ...

    def stop(self) -> None: ...


_STOPPING = threading.Event()
_ACTIVE: list[Launcher] = []  # the launcher of the collection running in this process


def stop_runs(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM: ask every running main.py to stop (each records itself `interrupted` and exits
    within seconds) and start no more."""
    _STOPPING.set()
    for launcher in _ACTIVE:
        launcher.stop()


def resumable(run_dir: Path) -> bool:
    """A run cut off (interrupted, or killed so that its run.json still says running) after a checkpoint."""
    info_path = run_dir / "run.json"
    if not (run_dir / CHECKPOINT).exists() or not info_path.exists():
        return False
    return effective_status(json.loads(info_path.read_text())) in ("interrupted", "dead")


def tracking_labels(collection: str, run_id: int) -> tuple[str, ...]:
    """A fresh run's place in its collection for any tracker: the collection's name as the group (an MLflow
    experiment, a W&B group), and its run_id as a tag."""
    quoted = collection.replace("\\", "\\\\").replace("'", "\\'")
    return f"tracking.group='{quoted}'", f"++tracking.tags.run_id={run_id}"


def execute(launcher: Launcher, main_script: Path, planned: Planned, run_dir: Path,
            labels: Sequence[str] = ()) -> dict:
    """Run main.py once through `launcher`, continuing a cut-off run from its checkpoint; return its
    row for runs.csv (without run_id). `labels` are overrides a fresh run gets that name no configuration
    (tracking_labels)."""
    if resumable(run_dir):
        command = [sys.executable, str(main_script), f"resume={run_dir}", *launcher.overrides]
    else:
        if run_dir.exists():
            shutil.rmtree(run_dir)  # left by an invocation that failed or was killed before a checkpoint
        run_dir.mkdir(parents=True)
        command = [sys.executable, str(main_script), *planned.overrides, f"seed={planned.seed}",
                   f"hydra.run.dir='{run_dir}'", *labels, *launcher.overrides]
    started = time.perf_counter()
    returncode = launcher.run(command, run_dir / "output.log", run_dir)
    return row_of(planned, run_dir, returncode, round(time.perf_counter() - started, 3))


def row_of(planned: Planned, run_dir: Path, returncode: int, wall_time_s: float | None) -> dict:
    """A run's row for runs.csv (without run_id), from its run.json and main.py's exit status."""
    info = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").exists() else {}
    reported = info.get("status")
    status = reported if (returncode == 0 and reported in FINISHED) or reported == "interrupted" else "failed"
    return {
        "seed": planned.seed,
        "overrides": " ".join(planned.overrides),
        "status": status,
        "error": None if status in FINISHED else _error_from(run_dir, returncode),
        "final_central_accuracy": info.get("final_central_accuracy"),
        "best_central_accuracy": info.get("best_central_accuracy"),
        "wall_time_s": info.get("wall_time_s") or wall_time_s,
        "config": planned.config,
    }


def finished_unrecorded(run_dir: Path) -> bool:
    """Whether a run the ledger has as running (its invocation was killed) finished all the same."""
    info_path = run_dir / "run.json"
    return info_path.exists() and effective_status(json.loads(info_path.read_text())) in FINISHED


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: clean completed runs' final central accuracy, mean, std and a Student-t 95% CI.

    Degraded runs (some client calls failed) are counted in n_degraded and left out of the statistics:
    they did not run the configuration as stated.
    """
    rows = []
    for config, group in runs.groupby("config", sort=False):
        done = group.loc[group.status == "completed", "final_central_accuracy"].astype(float).dropna()
        n = len(done)
        mean = done.mean() if n else np.nan
        std = done.std(ddof=1) if n > 1 else np.nan
        half = stats.t.ppf(0.975, n - 1) * std / np.sqrt(n) if n > 1 else np.nan
        rows.append({"config": config, "n_runs": n, "n_failed": int((group.status == "failed").sum()),
                     "n_degraded": int((group.status == "degraded").sum()),
                     "mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def plot_accuracy(rounds: pd.DataFrame, runs: pd.DataFrame, path: Path) -> None:
    """Mean central accuracy per round with a Student-t 95% band, one line per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    merged = rounds.merge(runs[["run_id", "config"]], on="run_id")
    for config, group in merged.groupby("config", sort=False):
        per_round = group.groupby("round")["central_accuracy"]
        mean, std, n = per_round.mean(), per_round.std(ddof=1), per_round.count()
        half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * std / np.sqrt(n)
        line, = ax.plot(mean.index, mean.values, marker="o", markersize=3, label=f"{config} (n={n.max()})")
        ax.fill_between(mean.index, mean - half, mean + half, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("round")
    ax.set_ylabel("central accuracy")
    name = path.parent.name if len(path.parent.name) <= 60 else path.parent.name[:57] + "..."
    ax.set_title(f"{name}: mean with 95% CI", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


class Collection:
    """A collection directory, held by one invocation at a time (a lock file) and updated atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "unknown"
            self._lock_file.close()
            raise CollectionError(f"{self.path}: another run_and_collect is using this collection (pid {holder}); "
                                  "allowed: another --name, or wait for it to end") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()
        ledger = self.path / "runs.csv"
        self.runs = pd.read_csv(ledger, keep_default_na=False, na_values=[""]) if ledger.exists() \
            else pd.DataFrame(columns=RUNS_COLUMNS)
        self._mutex = threading.Lock()

    def run_dir(self, run_id: int) -> Path:
        return self.path / "runs" / f"run_{run_id:04d}"

    def todo(self, planned: Iterable[Planned], force: bool) -> list[tuple[int, Planned]]:
        """(run_id, run) for every planned run not yet completed; new runs get fresh ids."""
        known = {(str(r.config), int(r.seed)): (int(r.run_id), r.status) for r in self.runs.itertuples()}
        next_id = int(self.runs.run_id.max()) + 1 if len(self.runs) else 0
        work = []
        for run in planned:
            run_id, status = known.get((run.config, run.seed), (None, None))
            if run_id is None:
                run_id, next_id = next_id, next_id + 1
            if status not in FINISHED or force:
                work.append((run_id, run))
        return work

    def record(self, run_id: int, row: dict) -> None:
        """Put a run's row into runs.csv (replacing its earlier one) and rewrite the collected tables."""
        with self._mutex:
            run_dir = self.run_dir(run_id)
            row = {"run_id": run_id, **row, "run_dir": str(run_dir.relative_to(self.path)) if run_dir.exists() else None}
            new = pd.DataFrame([row], columns=RUNS_COLUMNS)
            others = self.runs[self.runs.run_id != run_id]
            runs = pd.concat([others, new], ignore_index=True) if len(others) else new
            self.runs = runs.sort_values("run_id", kind="stable").reset_index(drop=True)
            write_csv(self.path / "runs.csv", self.runs)
            if row["status"] != "running":
                self.rebuild()

    def rebuild(self) -> None:
        """Rewrite the collected tables, summary.csv and accuracy.png from the completed runs."""
        completed = self.runs[self.runs.status.isin(FINISHED)]
        for name in COLLECTED:
            frames = [self._read(run_id, name) for run_id in completed.run_id]
            frames = [f for f in frames if f is not None]
            if frames:
                write_csv(self.path / name, pd.concat(frames, ignore_index=True))
        write_csv(self.path / "summary.csv", summarize(self.runs))
        rounds = self.path / "rounds.csv"
        if len(completed) and rounds.exists():
            plot_accuracy(pd.read_csv(rounds), completed, self.path / "accuracy.png")

    def _read(self, run_id: int, name: str) -> pd.DataFrame | None:
        path = self.run_dir(int(run_id)) / name
        if not path.exists():
            return None
        frame = pd.read_csv(path)
        frame.insert(0, "run_id", int(run_id))
        return frame

    def close(self) -> None:
        self._lock_file.close()


def run_collection(collection: Collection, main_script: Path, planned: Sequence[Planned], force: bool = False,
                   jobs: int = 1, echo: Callable[[str], None] = print, launcher: Launcher | None = None) -> int:
    """Run what is missing, `jobs` at a time, as child processes or through another `launcher`; return the
    number of planned runs that are failed."""
    launcher = launcher or LocalRuns()
    _ACTIVE[:] = [launcher]
    work = collection.todo(planned, force)
    skipped = len(planned) - len(work)
    echo(f"collection {collection.path}: {len(planned)} runs planned, {skipped} already completed, "
         f"{len(work)} to run")
    runnable = []
    recorded = dict(zip(collection.runs.run_id.astype(int), collection.runs.status))
    for run_id, run in work:
        if not force and recorded.get(run_id) == "running" and finished_unrecorded(collection.run_dir(run_id)):
            collection.record(run_id, row_of(run, collection.run_dir(run_id), 0, None))
            echo(f"[done] run {run_id}  seed={run.seed}  {run.config}: finished as the last invocation stopped")
            continue
        owner = in_use(collection.run_dir(run_id))
        if owner is not None:  # e.g. an earlier invocation's run, still recording itself interrupted
            echo(f"[busy] run {run_id}  seed={run.seed}  {run.config}: its directory is in use by a live run "
                 f"({owner}); left as it is: run the same command again once that run has ended")
            continue
        runnable.append((run_id, run))

    started, durations = time.perf_counter(), []

    def start(run_id: int, run: Planned) -> dict:
        collection.record(run_id, {"seed": run.seed, "overrides": " ".join(run.overrides), "status": "running",
                                   "config": run.config})
        return execute(launcher, main_script, run, collection.run_dir(run_id),
                       tracking_labels(collection.path.name, run_id))

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        pending: dict[Future, tuple[int, Planned, float]] = {}
        queue = list(runnable)
        done_count = 0
        while queue or pending:
            if _STOPPING.is_set():
                queue.clear()
            while queue and len(pending) < max(1, jobs):
                run_id, run = queue.pop(0)
                pending[pool.submit(start, run_id, run)] = (run_id, run, time.perf_counter())
            finished, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in finished:
                run_id, run, began = pending.pop(future)
                row = future.result()
                collection.record(run_id, row)
                durations.append(time.perf_counter() - began)
                done_count += 1
                left = len(runnable) - done_count
                eta = np.mean(durations) * left / max(1, jobs)
                outcome = (f"acc {row['final_central_accuracy']:.4f}"
                           + (" (degraded: some client calls failed)" if row["status"] == "degraded" else "")
                           if row["status"] in FINISHED else f"FAILED: {row['error']}")
                echo(f"[{done_count}/{len(runnable)}] run {run_id}  seed={run.seed}  {run.config}  {outcome}  "
                     f"{format_duration(durations[-1])}  ETA {format_duration(eta) if left else '-'}")
    collection.rebuild()  # the pool is done; this also updates a collection written by an older fedsim
    if _STOPPING.is_set():
        raise KeyboardInterrupt
    ids = {(r.config, r.seed) for r in planned}
    mine = collection.runs[np.array([(c, int(s)) in ids for c, s in zip(collection.runs.config, collection.runs.seed)],
                                    dtype=bool)]
    failed = int((mine.status == "failed").sum())
    echo(f"done in {format_duration(time.perf_counter() - started)}: {int((mine.status == 'completed').sum())} "
         f"completed, {int((mine.status == 'degraded').sum())} degraded, {failed} failed -> {collection.path}")
    return failed

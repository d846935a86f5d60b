"""Collections: one experiment repeated over seeds and configurations, each run in its own process,
gathered into tidy CSVs that survive a kill at any moment.

A collection directory holds runs.csv (the ledger: one row per run_id), runs/run_NNNN/ (each run's
own directory, written by main.py), the concatenated rounds/clients/layers CSVs, summary.csv and
accuracy.png, and with baselines contrasts.csv and contrasts.png. Every file is replaced atomically, so a
reader never sees half of one.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fedsim.collections.contrasts import Analysis, contrasts
from fedsim.collections.plan import PLANNED, CollectionError, Planned
from fedsim.collections.plots import plot_accuracy, plot_contrasts
from fedsim.collections.summary import counted, summarize
from fedsim.rundir import (
    ACCURACY_PLOT,
    CHECKPOINT,
    CLIENTS,
    CONTRASTS,
    CONTRASTS_PLOT,
    DETECTION,
    FINISHED,
    LAYERS,
    OUTPUT_LOG,
    ROUNDS,
    RUNS,
    SUMMARY,
    info_path,
    read_info,
    status_of,
)
from fedsim.system.files import write_csv

RUNS_COLUMNS = [
    "run_id",
    "seed",
    "overrides",
    "status",
    "error",
    "final_central_accuracy",
    "best_central_accuracy",
    "wall_time_s",
    "run_dir",
    "config",
    "reason",
]


COLLECTED = (ROUNDS, CLIENTS, LAYERS, DETECTION)


def _error_from(info: dict, log_text: str, returncode: int) -> str:
    """The last line of a failed run's error: run.json's, else the log's, else the exit status."""
    if info.get("error"):
        return info["error"]
    lines = [line.strip() for line in log_text.splitlines()]
    lines = [line for line in lines if line and "HYDRA_FULL_ERROR" not in line]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    if returncode < 0:
        return f"killed by signal {signal.Signals(-returncode).name}"
    return lines[-1] if lines else f"exit status {returncode}"


def resumable(run_dir: Path) -> bool:
    """A run cut off (interrupted, or killed so that its run.json still says running) after a checkpoint."""
    return (run_dir / CHECKPOINT).exists() and status_of(run_dir) in ("interrupted", "dead")


def row_of(
    planned: Planned, run_dir: Path, returncode: int, wall_time_s: float | None, since: float = 0.0, log_from: int = 0
) -> dict:
    """A run's row for runs.csv (without run_id), from its run.json and main.py's exit status.

    `since` (a time.time()) and `log_from` (an offset into output.log) mark where this invocation began:
    a run.json older than `since` is an earlier invocation's (a resume refused before it started leaves
    the stopped run's run.json as it was), and only the log this invocation wrote names its error.
    """
    path = info_path(run_dir)
    fresh = path.exists() and path.stat().st_mtime >= since
    info = (read_info(run_dir) or {}) if fresh else {}
    reported = info.get("status")
    status = reported if (returncode == 0 and reported in FINISHED) or reported == "interrupted" else "failed"
    log = run_dir / OUTPUT_LOG
    log_text = log.read_bytes()[log_from:].decode(errors="replace") if log.exists() else ""
    return {
        "seed": planned.seed,
        "overrides": " ".join(planned.overrides),
        "status": status,
        "error": None if status in FINISHED else _error_from(info, log_text, returncode),
        "final_central_accuracy": info.get("final_central_accuracy"),
        "best_central_accuracy": info.get("best_central_accuracy"),
        "wall_time_s": info.get("wall_time_s") or wall_time_s,
        "config": planned.config,
        "reason": planned.reason,
    }


def finished_unrecorded(run_dir: Path) -> bool:
    """Whether a run the ledger has as running (its invocation was killed) finished all the same."""
    return status_of(run_dir) in FINISHED


class Collection:
    """A collection directory, held by one invocation at a time (a lock file) and updated atomically; its runs
    compared as `analysis` says (the metric, the baselines, the margin)."""

    def __init__(self, path: Path, analysis: Analysis | None = None) -> None:
        self.path = Path(path).resolve()
        self.analysis = analysis or Analysis()
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "unknown"
            self._lock_file.close()
            raise CollectionError(
                f"{self.path}: another run_and_collect is using this collection (pid {holder}); "
                "allowed: another --name, or wait for it to end"
            ) from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()
        ledger = self.path / RUNS
        self.runs = (
            pd.read_csv(ledger, keep_default_na=False, na_values=[""]).reindex(columns=RUNS_COLUMNS)
            if ledger.exists()
            else pd.DataFrame(columns=RUNS_COLUMNS)
        )
        self.runs["reason"] = self.runs["reason"].astype(object).fillna(PLANNED)  # an old ledger: no reasons
        self._mutex = threading.Lock()
        self._tables: dict[int, dict[str, pd.DataFrame | None]] = {}  # each run's tables, as `_table` read them

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
            row = {
                "run_id": run_id,
                **row,
                "run_dir": str(run_dir.relative_to(self.path)) if run_dir.exists() else None,
            }
            new = pd.DataFrame([row], columns=RUNS_COLUMNS)
            others = self.runs[self.runs.run_id != run_id]
            runs = pd.concat([others, new], ignore_index=True) if len(others) else new
            self.runs = runs.sort_values("run_id", kind="stable").reset_index(drop=True)
            write_csv(self.path / RUNS, self.runs)
            self._tables.pop(run_id, None)  # a run made again (resumed, rerun) has new tables
            if row["status"] != "running":
                self.rebuild(plot=False)

    def rebuild(self, plot: bool = True) -> None:
        """Rewrite the collected tables, summary.csv and (with baselines) contrasts.csv from the completed runs, and
        with `plot` accuracy.png and contrasts.png.

        Each run's tables are read once per invocation (a collection of hundreds of runs rewrites them after
        every run); the plots, the slow part, are drawn when the invocation ends."""
        completed = self.runs[self.runs.status.isin(FINISHED)]
        collected = {}
        for name in COLLECTED:
            frames = [self._table(int(run_id), name) for run_id in completed.run_id]
            frames = [f for f in frames if f is not None]
            if frames:
                collected[name] = pd.concat(frames, ignore_index=True)
                write_csv(self.path / name, collected[name])
        rounds = collected.get(ROUNDS)
        write_csv(self.path / SUMMARY, summarize(self.runs, rounds, self.analysis.metric))
        table = self.contrasts(rounds)
        if table is not None:
            write_csv(self.path / CONTRASTS, table)
        if plot and rounds is not None:
            plot_accuracy(rounds, completed, self.path / ACCURACY_PLOT)
        if plot and table is not None and len(table):
            plot_contrasts(table, self.path / CONTRASTS_PLOT)

    def contrasts(self, rounds: pd.DataFrame | None = None) -> pd.DataFrame | None:
        """The paired contrasts of the completed runs under `analysis` (None without baselines); `rounds`, the
        collected rounds.csv, is read when not given."""
        if not self.analysis.baselines:
            return None
        if rounds is None and (self.path / ROUNDS).exists():
            rounds = pd.read_csv(self.path / ROUNDS)
        return contrasts(counted(self.runs, rounds, self.analysis.metric), self.analysis)

    def _table(self, run_id: int, name: str) -> pd.DataFrame | None:
        """A run's table (rounds.csv, ...) with its run_id in front, or None if the run has none."""
        tables = self._tables.setdefault(run_id, {})
        if name not in tables:
            path = self.run_dir(run_id) / name
            frame = pd.read_csv(path) if path.exists() else None
            if frame is not None:
                frame.insert(0, "run_id", run_id)
            tables[name] = frame
        return tables[name]

    def close(self) -> None:
        self._lock_file.close()

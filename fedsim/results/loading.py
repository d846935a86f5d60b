"""Load a run or a collection into pandas DataFrames, for notebooks:

from fedsim.results import load
c = load("results/collections/NAME")   # c.runs, c.rounds, c.clients, c.layers, c.detection, c.summary, c.contrasts
r = load("results/runs/2026-11-22/...")  # r.info, r.config, r.rounds, r.clients, r.layers, r.detection
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from fedsim.config.overrides import config_pairs
from fedsim.rundir import (
    CLIENTS,
    CONTRASTS,
    DETECTION,
    LAYERS,
    ROUNDS,
    RUNS,
    SUMMARY,
    config_path,
    effective_status,
    read_info,
)


def _csv(path: Path) -> pd.DataFrame:
    """A table, or an empty one when the run or collection has not written it (yet)."""
    return pd.read_csv(path) if path.exists() and path.stat().st_size else pd.DataFrame()


@dataclass
class RunResults:
    """One run directory: run.json as `info`, config.yaml as a dict, and its CSVs."""

    path: Path
    info: dict
    config: dict
    rounds: pd.DataFrame
    clients: pd.DataFrame
    layers: pd.DataFrame
    detection: pd.DataFrame


@dataclass
class CollectionResults:
    """One collection directory; rounds/clients/layers carry run_id, and `runs` maps it to seed and config."""

    path: Path
    runs: pd.DataFrame
    rounds: pd.DataFrame
    clients: pd.DataFrame
    layers: pd.DataFrame
    summary: pd.DataFrame
    detection: pd.DataFrame
    contrasts: pd.DataFrame  # each configuration against its baseline (run_and_collect --baseline); else empty

    def with_config(self, table: str) -> pd.DataFrame:
        """A collected table (rounds, clients, layers or detection) joined with each run's seed and config."""
        return getattr(self, table).merge(self.runs[["run_id", "seed", "config"]], on="run_id")


def config_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` plus one column per override key in its `config` ("attack=x strategy=y" -> attack, strategy), so
    summaries pivot by any swept key:
    `config_columns(c.summary).pivot(index="attack", columns="strategy", values="mean")`."""
    pairs = frame["config"].map(lambda c: config_pairs(str(c)))
    return frame.join(pd.DataFrame(pairs.tolist(), index=frame.index))


def load_run(path: str | Path) -> RunResults:
    path = Path(path)
    info = read_info(path)
    if info is None:
        raise FileNotFoundError(f"{path}: no run.json; not a run directory")
    config = config_path(path)
    info["status"] = effective_status(info)  # `dead`: says running, but its process is gone
    return RunResults(
        path=path,
        info=info,
        config=yaml.safe_load(config.read_text()) if config.exists() else {},
        rounds=_csv(path / ROUNDS),
        clients=_csv(path / CLIENTS),
        layers=_csv(path / LAYERS),
        detection=_csv(path / DETECTION),
    )


def load_collection(path: str | Path) -> CollectionResults:
    path = Path(path)
    if not (path / RUNS).exists():
        raise FileNotFoundError(f"{path}: no runs.csv; not a collection directory")
    return CollectionResults(
        path=path,
        runs=_csv(path / RUNS),
        rounds=_csv(path / ROUNDS),
        clients=_csv(path / CLIENTS),
        layers=_csv(path / LAYERS),
        summary=_csv(path / SUMMARY),
        detection=_csv(path / DETECTION),
        contrasts=_csv(path / CONTRASTS),
    )


def load(path: str | Path) -> RunResults | CollectionResults:
    """A collection if `path` has runs.csv, else a run."""
    return load_collection(path) if (Path(path) / RUNS).exists() else load_run(path)

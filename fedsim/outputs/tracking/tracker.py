"""Experiment trackers as run outputs: TensorBoard, MLflow and Weights & Biases, one callback each.

Each logs rounds.csv's metrics per round (the round is the step), the resolved config as parameters,
run.json's fields at the end and, where the tool keeps artifacts, the final model. A tracker is an
extra view of a run, never its record: the first failure (a server down, a full disk) prints one
warning and switches that tracker off, and the run, its CSVs and run.json go on untouched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from fedsim.outputs.base import Callback, Phase
from fedsim.rundir import MODEL, read_info
from fedsim.server.record import RoundRecord
from fedsim.system.errors import first_line

DEFAULT_GROUP = "fedsim"  # the MLflow experiment / W&B project of runs that belong to no collection


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A rounds.csv row as a tracker's scalars: the numbers, without the round (it is the step)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)
    }


def flat_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Config values as the strings trackers store (lists and None included)."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in params.items()}


class Tracker(Callback):
    """A tracker run mirroring one fedsim run. Subclasses fill in `_open`, `_log_round`, `_log_model`,
    `_log_info` and `_close`; every call but `_close`'s goes through `_guard`.

    `group`: the collection (or multirun) the run belongs to; `tags` (run_id among them) label it.
    A resumed run continues its tracker run where the tool can (`state` holds its id). A report: it logs the
    complete, timed round (user callbacks' metrics included) and, at the end, the saved final model.
    """

    name = "tracker"
    phase = Phase.REPORT

    def __init__(
        self, group: str | None = None, tags: Mapping[str, Any] | None = None, echo: Callable[[str], None] = print
    ) -> None:
        self.group = str(group) if group else None
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.echo = echo
        self.run_dir: Path | None = None
        self.params: dict[str, str] = {}
        self.run_id: str | None = None
        self.failed = False

    def bind(self, run_dir: Path, params: Mapping[str, Any]) -> None:
        """The run this tracker mirrors: its directory (run.json, model.safetensors) and its resolved config."""
        self.run_dir = Path(run_dir)
        self.params = flat_params(params)

    @property
    def run_name(self) -> str:
        return self.run_dir.name if self.run_dir is not None else "run"

    def _guard(self, step: Callable[[], None]) -> None:
        """Run a tracker call; the first failure warns once and turns the tracker off."""
        if self.failed:
            return
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - any tracker failure must leave the run alone
            self.failed = True
            self.echo(
                f"warning: tracking: {self.name} failed ({type(exc).__name__}: {first_line(exc)}); "
                "it is off for the rest of this run, whose CSVs and run.json are unaffected"
            )

    def on_run_start(self, saved: dict[str, Any] | None) -> None:
        self.run_id = (saved or {}).get("run_id")
        self._guard(self._open)

    def on_round_end(self, record: RoundRecord) -> None:
        self._guard(lambda: self._log_round(record.server_round, scalars(record.metrics)))

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def on_run_end(self, summary: dict[str, Any]) -> None:
        self._guard(self._log_model)

    def close(self) -> None:
        """run.json's final fields (its status is final before outputs close), then the tracker run's end."""
        status = "failed"

        def final_fields() -> None:
            nonlocal status
            info = read_info(self.run_dir)
            if info is None:
                raise OSError(f"{self.run_dir}: no readable run.json")
            status = str(info.get("status", status))
            self._log_info(info)

        self._guard(final_fields)
        self._close(status)

    def _open(self) -> None: ...

    def _log_round(self, step: int, metrics: dict[str, float]) -> None: ...

    def _log_model(self) -> None: ...

    def _log_info(self, info: dict[str, Any]) -> None: ...

    def _close(self, status: str) -> None: ...

    @property
    def model_path(self) -> Path | None:
        path = self.run_dir / MODEL if self.run_dir is not None else None
        return path if path is not None and path.exists() else None


class NoTracking(Tracker):
    """tracking=none: CSVs and run.json only."""

    name = "none"

    def on_round_end(self, record: RoundRecord) -> None:
        """Nothing to log."""

    def close(self) -> None:
        """Nothing to end."""


def group_multirun(cfg: DictConfig, sweep_dir: str, job_num: int) -> None:
    """A Hydra multirun's jobs as one group (named by its sweep folder), each tagged with its job number,
    unless a group was given."""
    if cfg.tracking.group or cfg.resume is not None:
        return
    with open_dict(cfg):
        cfg.tracking.group = "multirun " + "/".join(Path(sweep_dir).parts[-2:])
        cfg.tracking.tags = {**cfg.tracking.get("tags", {}), "job": job_num}

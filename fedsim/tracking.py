"""Experiment trackers as run outputs: TensorBoard, MLflow and Weights & Biases, one callback each.

Each logs rounds.csv's metrics per round (the round is the step), the resolved config as parameters,
run.json's fields at the end and, where the tool keeps artifacts, the final model. A tracker is an
extra view of a run, never its record: the first failure (a server down, a full disk) prints one
warning and switches that tracker off, and the run, its CSVs and run.json go on untouched.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from omegaconf import DictConfig, open_dict

from fedsim.callbacks import Callback
from fedsim.errors import first_line
from fedsim.record import RoundRecord

DEFAULT_GROUP = "fedsim"  # the MLflow experiment / W&B project of runs that belong to no collection


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """A rounds.csv row as a tracker's scalars: the numbers, without the round (it is the step)."""
    return {k: float(v) for k, v in metrics.items()
            if k != "round" and isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)}


def flat_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Config values as the strings trackers store (lists and None included)."""
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in params.items()}


class Tracker(Callback):
    """A tracker run mirroring one fedsim run. Subclasses fill in `_open`, `_log_round`, `_log_model`,
    `_log_info` and `_close`; every call but `_close`'s goes through `_guard`.

    `group`: the collection (or multirun) the run belongs to; `tags` (run_id among them) label it.
    A resumed run continues its tracker run where the tool can (`state` holds its id).
    """

    name = "tracker"

    def __init__(self, group: str | None = None, tags: Mapping[str, Any] | None = None,
                 echo: Callable[[str], None] = print) -> None:
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
            self.echo(f"warning: tracking: {self.name} failed ({type(exc).__name__}: {first_line(exc)}); "
                      "it is off for the rest of this run, whose CSVs and run.json are unaffected")

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
            info = json.loads((self.run_dir / "run.json").read_text())
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
        path = self.run_dir / "model.safetensors" if self.run_dir is not None else None
        return path if path is not None and path.exists() else None


class NoTracking(Tracker):
    """tracking=none: CSVs and run.json only."""

    name = "none"

    def on_round_end(self, record: RoundRecord) -> None:
        """Nothing to log."""

    def close(self) -> None:
        """Nothing to end."""


class TensorBoard(Tracker):
    """Event files in RUN/tensorboard: every metric per round, the config and run.json as text.

    `tensorboard --logdir RUN` (a run) or `--logdir COLLECTION/runs` (a collection, one line per run)."""

    name = "tensorboard"

    def __init__(self, subdir: str = "tensorboard", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.subdir = subdir
        self.writer = None

    def _open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.run_dir / self.subdir))
        if self.run_id is None:  # a resumed run's config is in its first event file
            self.run_id = self.run_name
            self.writer.add_text("config", _table(self.params), 0)
            self.writer.add_text("tags", _table({"group": self.group or DEFAULT_GROUP, **self.tags}), 0)

    def _log_round(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def _log_info(self, info: dict[str, Any]) -> None:
        self.writer.add_text("run.json", _table(flat_params(info)), int(info.get("rounds_completed") or 0))

    def _close(self, status: str) -> None:
        if self.writer is not None:
            self._guard(self.writer.close)


def _table(values: Mapping[str, str]) -> str:
    """Markdown, which TensorBoard's text tab renders as a table."""
    return "| key | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in values.items())


class MLflow(Tracker):
    """An MLflow run per fedsim run, in the experiment named by `group` (a collection's name, else `fedsim`).

    `uri` null: a SQLite store, results/mlflow.db; any SQLite store keeps its artifacts in mlartifacts/
    beside it. Or any MLflow tracking URI (`http://host:5000`, `file:./mlruns`). A server that does not answer fails within
    seconds: the client's retries are turned off.
    """

    name = "mlflow"

    def __init__(self, uri: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.uri = uri
        self.client = None

    def store(self) -> tuple[str, str | None]:
        """The tracking URI and, for a SQLite store, its artifacts' folder beside the database (MLflow's
        default would be ./mlruns of whatever directory the run started in)."""
        uri = str(self.uri) if self.uri else f"sqlite:///{Path('results').absolute() / 'mlflow.db'}"
        if not uri.startswith("sqlite:///"):
            return uri, None
        database = Path(uri.removeprefix("sqlite:///"))
        database.parent.mkdir(parents=True, exist_ok=True)
        return uri, (database.parent / "mlartifacts").as_uri()

    def _open(self) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # after the import, which sets mlflow's level
            logging.getLogger(name).setLevel(logging.WARNING)

        uri, artifacts = self.store()
        self.client = MlflowClient(tracking_uri=uri)
        if self.run_id is not None:  # a resumed run continues its MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
            return
        group = self.group or DEFAULT_GROUP
        experiment = self.client.get_experiment_by_name(group)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            group, artifact_location=artifacts and f"{artifacts}/{group}")
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in self.params.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        self.client.log_batch(self.run_id, tags=[RunTag("run_dir", str(self.run_dir))])

    def _log_round(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def _log_model(self) -> None:
        if self.model_path is not None:
            self.client.log_artifact(self.run_id, str(self.model_path))

    def _log_info(self, info: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(f"run.{k}", v[:5000]) for k, v in flat_params(info).items()]
        self.client.log_batch(self.run_id, tags=tags)

    def _close(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            ended = {"completed": "FINISHED", "degraded": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            self._guard(lambda: self.client.set_terminated(self.run_id, status=ended))


class WandB(Tracker):
    """A W&B run per fedsim run, offline by default (RUN/wandb, upload later with `wandb sync`); `mode:
    online` logs to the server of `wandb login`. Runs of a collection share the W&B group of its name."""

    name = "wandb"

    def __init__(self, project: str = DEFAULT_GROUP, mode: str = "offline", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project = project
        self.mode = mode
        self.run = None

    def _open(self) -> None:
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self.run = wandb.init(
            project=self.project, group=self.group, name=self.run_name, dir=str(self.run_dir), mode=self.mode,
            config=self.params, tags=[f"{k}={v}" for k, v in self.tags.items()], id=self.run_id, resume="allow",
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.run_id = self.run.id

    def _log_round(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def _log_model(self) -> None:
        import wandb

        if self.model_path is not None:
            artifact = wandb.Artifact(f"model-{self.run_id}", type="model")
            artifact.add_file(str(self.model_path))
            self.run.log_artifact(artifact)

    def _log_info(self, info: dict[str, Any]) -> None:
        self.run.summary.update({f"run.{k}": v for k, v in flat_params(info).items()})

    def _close(self, status: str) -> None:
        if self.run is not None:
            self._guard(lambda: self.run.finish(exit_code=0 if status in ("completed", "degraded") else 1))
            import wandb

            self._guard(wandb.teardown)  # stops wandb's service process


def group_multirun(cfg: DictConfig, sweep_dir: str, job_num: int) -> None:
    """A Hydra multirun's jobs as one group (named by its sweep folder), each tagged with its job number,
    unless a group was given."""
    if "tracking" not in cfg or cfg.tracking.get("group") or cfg.get("resume") is not None:
        return
    with open_dict(cfg):
        cfg.tracking.group = "multirun " + "/".join(Path(sweep_dir).parts[-2:])
        cfg.tracking.tags = {**cfg.tracking.get("tags", {}), "job": job_num}

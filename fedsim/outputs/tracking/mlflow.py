"""MLflow: a SQLite store at results/mlflow.db by default, or a server at tracking.uri."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from fedsim.outputs.tracking.tracker import DEFAULT_GROUP, Tracker, flat_params


class MLflow(Tracker):
    """An MLflow run per fedsim run, in the experiment named by `group` (a collection's name, else `fedsim`).

    `uri` null: a SQLite store, results/mlflow.db; any SQLite store keeps its artifacts in mlartifacts/
    beside it. Or any MLflow tracking URI (`http://host:5000`, `file:./mlruns`). A server that does not answer fails
    within seconds: the client's retries are turned off.
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
        from mlflow.entities import Param, RunTag  # mlflow only with tracking=mlflow, after its variables are set
        from mlflow.tracking import MlflowClient  # (as above)

        for name in ("mlflow", "alembic"):  # after the import, which sets mlflow's level
            logging.getLogger(name).setLevel(logging.WARNING)

        uri, artifacts = self.store()
        self.client = MlflowClient(tracking_uri=uri)
        if self.run_id is not None:  # a resumed run continues its MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
            return
        group = self.group or DEFAULT_GROUP
        experiment = self.client.get_experiment_by_name(group)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(group, artifact_location=artifacts and f"{artifacts}/{group}")
        )
        run = self.client.create_run(experiment_id, run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        params = [Param(k, v[:6000]) for k, v in self.params.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        self.client.log_batch(self.run_id, tags=[RunTag("run_dir", str(self.run_dir))])

    def _log_round(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric  # mlflow only with tracking=mlflow

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def _log_model(self) -> None:
        if self.model_path is not None:
            self.client.log_artifact(self.run_id, str(self.model_path))

    def _log_info(self, info: dict[str, Any]) -> None:
        from mlflow.entities import RunTag  # mlflow only with tracking=mlflow

        tags = [RunTag(f"run.{k}", v[:5000]) for k, v in flat_params(info).items()]
        self.client.log_batch(self.run_id, tags=tags)

    def _close(self, status: str) -> None:
        if self.client is not None and self.run_id is not None:
            ended = {"completed": "FINISHED", "degraded": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED")
            self._guard(lambda: self.client.set_terminated(self.run_id, status=ended))

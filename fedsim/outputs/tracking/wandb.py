"""Weights & Biases: offline in RUN/wandb by default."""

from __future__ import annotations

import os
from typing import Any

from fedsim.outputs.tracking.tracker import DEFAULT_GROUP, Tracker, flat_params


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
        import wandb  # wandb only with tracking=wandb, after its variables are set

        self.run = wandb.init(
            project=self.project,
            group=self.group,
            name=self.run_name,
            dir=str(self.run_dir),
            mode=self.mode,
            config=self.params,
            tags=[f"{k}={v}" for k, v in self.tags.items()],
            id=self.run_id,
            resume="allow",
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.run_id = self.run.id

    def _log_round(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def _log_model(self) -> None:
        import wandb  # wandb only with tracking=wandb

        if self.model_path is not None:
            artifact = wandb.Artifact(f"model-{self.run_id}", type="model")
            artifact.add_file(str(self.model_path))
            self.run.log_artifact(artifact)

    def _log_info(self, info: dict[str, Any]) -> None:
        self.run.summary.update({f"run.{k}": v for k, v in flat_params(info).items()})

    def _close(self, status: str) -> None:
        if self.run is not None:
            self._guard(lambda: self.run.finish(exit_code=0 if status in ("completed", "degraded") else 1))
            import wandb  # wandb only with tracking=wandb

            self._guard(wandb.teardown)  # stops wandb's service process

"""TensorBoard: event files in RUN/tensorboard."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedsim.outputs.tracking.tracker import DEFAULT_GROUP, Tracker, flat_params
from fedsim.rundir import RUN_JSON


class TensorBoard(Tracker):
    """Event files in RUN/tensorboard: every metric per round, the config and run.json as text.

    `tensorboard --logdir RUN` (a run) or `--logdir COLLECTION/runs` (a collection, one line per run)."""

    name = "tensorboard"

    def __init__(self, subdir: str = "tensorboard", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.subdir = subdir
        self.writer = None

    def _open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter  # tensorboard only with tracking=tensorboard

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
        self.writer.add_text(RUN_JSON, _table(flat_params(info)), int(info.get("rounds_completed") or 0))

    def _close(self, status: str) -> None:
        if self.writer is not None:
            self._guard(self.writer.close)


def _table(values: Mapping[str, str]) -> str:
    """Markdown, which TensorBoard's text tab renders as a table."""
    return "| key | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in values.items())

"""model.safetensors: the last global model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.numpy import save_file

from fedsim.outputs.base import Callback, Phase
from fedsim.server.record import RoundRecord


class FinalModel(Callback):
    """model.safetensors: the last global model, tensors named as in the model's state_dict; a writer, so it is
    saved before the reports' run end (a tracker uploads it)."""

    phase = Phase.WRITE

    def __init__(self, path: Path) -> None:
        self.path = path
        self.model: dict[str, Any] = {}

    def on_round_end(self, record: RoundRecord) -> None:
        self.model = dict(zip(record.names, record.global_weights))

    def on_run_end(self, summary: dict[str, Any]) -> None:
        if self.model:
            save_file(self.model, str(self.path))

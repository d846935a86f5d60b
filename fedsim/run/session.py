"""A run in progress on the server: its model, test split, clock of simulated faults, and outputs."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim.config.compose import flatten
from fedsim.config.validate import fit_clients_per_round
from fedsim.data.loader import Loader, load_test
from fedsim.data.prepare import prepare_data
from fedsim.model.train import evaluate
from fedsim.model.weights import get_weights, layer_names, set_weights
from fedsim.outputs.archive import ArchiveWriter, WeightArchive
from fedsim.outputs.base import Callback
from fedsim.outputs.checkpointer import (
    Checkpoint,
    Checkpointer,
    output_key,
    restore_strategy,
)
from fedsim.outputs.csv_logs import ClientsCsv, RoundsCsv
from fedsim.outputs.detection import DetectionCsv
from fedsim.outputs.failures import ClientFailures
from fedsim.outputs.final_model import FinalModel
from fedsim.outputs.layer_stats import WeightScrutiny
from fedsim.outputs.memory import MemoryProbe
from fedsim.outputs.privacy_budget import PrivacyBudget
from fedsim.outputs.progress import Progress
from fedsim.outputs.summary import RunSummary
from fedsim.run.experiment import Experiment, check_space, load_model
from fedsim.run.info import RunInfo
from fedsim.server.loop import Start
from fedsim.server.record import RoundRecord


class _DropDeprecationNotice(logging.Filter):
    """Flower flags run_simulation as deprecated on every run; it is still its only Python entry into simulation."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage()


def quiet(log_level: str) -> None:
    """Keep Ray's and Flower's chatter below `log_level`; flwr logs once, through its own handler."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    for name in ("flwr", "ray", "transformers", "datasets", "filelock"):
        logging.getLogger(name).setLevel(log_level)
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False
    if logging.getLevelNamesMapping()[log_level] > logging.INFO:
        for handler in flwr_logger.handlers:
            handler.addFilter(_DropDeprecationNotice())


class Session:
    """A run in progress on the server: the experiment, its model and test split, and its outputs."""

    def __init__(self, experiment: Experiment, run_dir: Path, info: RunInfo) -> None:
        """A resumed run (`resume` set) continues from the run directory's checkpoint, if it has one.
        `info` (run.json) gets the metrics after every round."""
        cfg = self.cfg = experiment.cfg
        self.experiment, self.run_dir, self.info = experiment, run_dir, info
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.device = torch.device("cuda" if cfg.resources.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        self.model = load_model(cfg).to(self.device)
        self.names = layer_names(self.model)
        check_space(cfg, run_dir, self.names, get_weights(self.model))
        self.checkpoint = Checkpoint.load(run_dir, self.names) if cfg.get("resume") is not None else None
        if self.checkpoint is not None:
            restore_strategy(self.strategy, self.checkpoint.strategy_tensors, self.checkpoint.strategy_layout)
        self.testloader: Loader | None = None
        self.callbacks: list[Callback] = []

    @property
    def strategy(self):
        return self.experiment.strategy

    def prepare(self) -> None:
        """Read, subset and featurize IMDB once (cached on disk), and load the server's test split."""
        self.testloader = load_test(prepare_data(self.cfg), 4 * self.cfg.client.batch_size)

    def open_outputs(self) -> None:
        """Start every output, after the checkpoint's round when resuming; the checkpoint writer comes last."""
        outputs = (
            standard_outputs(self.experiment, self.run_dir, self.names, self.info.progress) + self.experiment.callbacks
        )
        self.callbacks = outputs + [Checkpointer(self.run_dir, self.strategy, outputs)]
        saved = self.checkpoint.outputs if self.checkpoint is not None else {}
        for index, callback in enumerate(self.callbacks):
            callback.on_run_start(saved.get(output_key(index, callback)) if self.checkpoint is not None else None)

    def start(self) -> Start:
        """Where the rounds begin: round 0 from the seeded model, or after the checkpoint's round from its weights."""
        if self.checkpoint is not None:
            return Start(self.checkpoint.server_round + 1, self.checkpoint.weights, self.names)
        return Start(0, get_weights(self.model), self.names)

    def evaluate(self, weights: list[np.ndarray]) -> tuple[float, float]:
        """Central evaluation: (loss, accuracy) of `weights` on the server's test split."""
        set_weights(self.model, weights)
        return evaluate(self.model, self.testloader, self.device)

    def end_round(self, record: RoundRecord) -> None:
        for callback in self.callbacks:
            callback.on_round_end(record)

    def finish(self) -> dict[str, Any]:
        """The outputs' end of run; what they add to run.json."""
        summary: dict[str, Any] = {}
        for callback in self.callbacks:
            callback.on_run_end(summary)
        return summary

    def close(self) -> None:
        for callback in self.callbacks:
            callback.close()


def standard_outputs(
    experiment: Experiment, run_dir: Path, names: list[str], publish: Callable[[dict[str, Any]], None] | None = None
) -> list[Callback]:
    """Every run's outputs, in the order they see each round; `publish` gets run.json's metrics after every round.

    The one place their order matters, and why: the layer statistics fill each update's columns before
    clients.csv writes them; the memory probe and the privacy budget fill rounds.csv's columns before it is
    written; Progress prints the row rounds.csv has just timed; detection.csv reads clients.csv at the end, and
    the tracker logs run.json's final fields, so both come after the files they read. The checkpointer (added
    by the session) comes after all of them, to save every output's state. No callback reads another.
    """
    cfg, attack = experiment.cfg, experiment.attack
    outputs: list[Callback] = [
        WeightScrutiny(run_dir / "layers.csv", attack.name, float(attack.node_ratio), enabled=cfg.scrutiny),
        ClientsCsv(run_dir / "clients.csv"),
    ]
    if cfg.archive.mode != "none":
        writer = partial(
            ArchiveWriter, run_dir, names, list(cfg.archive.layers), cfg.archive.dtype, cfg.archive.max_pending
        )
        outputs.append(WeightArchive(writer, clients=cfg.archive.mode == "all"))
    outputs.append(MemoryProbe())
    if experiment.privacy.enabled:
        outputs.append(
            PrivacyBudget(experiment.privacy, experiment.strategy, int(cfg.num_clients), fit_clients_per_round(cfg))
        )
    outputs += [
        RoundsCsv(run_dir / "rounds.csv"),
        Progress(cfg.num_rounds),
        RunSummary(publish),
        ClientFailures(float(cfg.faults.max_failure_rate)),
    ]
    if cfg.scrutiny:
        outputs.append(DetectionCsv(run_dir / "detection.csv", run_dir / "clients.csv"))
    experiment.tracker.bind(run_dir, flatten(cfg))
    return outputs + [FinalModel(run_dir / "model.safetensors"), experiment.tracker]

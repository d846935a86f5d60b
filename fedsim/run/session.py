"""A run in progress on the server: its model, test split, clock of simulated faults, and outputs."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim.config.compose import flatten
from fedsim.data.loader import Loader, load_test
from fedsim.data.prepare import prepare_data
from fedsim.model.train import evaluate
from fedsim.model.weights import get_weights, layer_names, set_weights
from fedsim.outputs.archive import ArchiveWriter, WeightArchive
from fedsim.outputs.base import Callback
from fedsim.outputs.checkpointer import (
    Checkpoint,
    Checkpointer,
    restore_strategy,
)
from fedsim.outputs.csv_logs import ClientsCsv, RoundsCsv
from fedsim.outputs.detection import DetectionCsv
from fedsim.outputs.failures import ClientFailures
from fedsim.outputs.final_model import FinalModel
from fedsim.outputs.layer_stats import WeightScrutiny
from fedsim.outputs.memory_probe import MemoryProbe
from fedsim.outputs.phases import Outputs, extra_metrics
from fedsim.outputs.privacy_budget import PrivacyBudget
from fedsim.outputs.progress import Progress
from fedsim.outputs.retried_work import Retries
from fedsim.outputs.run_summary import RunSummary
from fedsim.run.experiment import Experiment, build, check_space, load_model
from fedsim.run.info import RunInfo
from fedsim.rundir import CLIENTS, DETECTION, LAYERS, MODEL, ROUNDS
from fedsim.server.loop import Start
from fedsim.server.record import RoundRecord


class Session:
    """A run in progress on the server: the experiment, its model and test split, and its outputs."""

    def __init__(self, experiment: Experiment, run_dir: Path, info: RunInfo) -> None:
        """A resumed run (`resume` set) continues from the run directory's checkpoint, if it has one.
        `info` (run.json) gets the metrics after every round."""
        cfg = self.cfg = experiment.cfg
        self.experiment, self.run_dir, self.info = experiment, run_dir, info
        self._seed()
        self.device = torch.device("cuda" if cfg.resources.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        self.model = load_model(cfg).to(self.device)
        self.names = layer_names(self.model)
        check_space(experiment.outputs, run_dir, self.names, get_weights(self.model), experiment.counts.fit)
        self._restore(Checkpoint.load(run_dir, self.names) if cfg.get("resume") is not None else None)
        self.testloader: Loader | None = None
        self.outputs = Outputs([])

    def _seed(self) -> None:
        random.seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        torch.manual_seed(self.cfg.seed)

    def _restore(self, checkpoint: Checkpoint | None) -> None:
        """Go on from `checkpoint` (None: from the start): the strategy given its state, the rounds it ended."""
        self.checkpoint = checkpoint
        if checkpoint is not None:
            restore_strategy(self.strategy, checkpoint.strategy_tensors, checkpoint.strategy_layout)
        self.last_round = checkpoint.server_round if checkpoint is not None else -1

    @property
    def strategy(self):
        return self.experiment.strategy

    def rounds_done(self) -> int:
        """The last round whose checkpoint is on disk (-1: none yet)."""
        return self.last_round

    def restart(self, why: str) -> None:
        """Back to the last checkpoint in this process, as `resume=RUN_DIR` would go on from it, after the
        federation died under the run mid-round (fedsim.runtimes.recovery): the outputs closed and reopened
        after the checkpoint's round, and a fresh strategy given the checkpoint's state. run.json lists the
        restart, and why."""
        self.outputs.close()
        experiment = self.experiment
        self.experiment = build(
            self.cfg, client_fn=experiment.client_fn, callbacks=experiment.callbacks, run_config=experiment.run_config
        )
        self._seed()
        self._restore(Checkpoint.load(self.run_dir, self.names))
        self.info.restarted(self.rounds_done(), why)
        self.open_outputs()

    def prepare(self) -> None:
        """Read, subset and featurize IMDB once (cached on disk), and load the server's test split."""
        self.testloader = load_test(prepare_data(self.experiment.data), 4 * self.cfg.client.batch_size)

    def open_outputs(self) -> None:
        """Start every output, after the checkpoint's round when resuming: fedsim's, the user's (`build(...,
        callbacks=...)`), and the checkpoint writer, run phase by phase (fedsim.outputs.phases)."""
        user = self.experiment.callbacks
        standard = standard_outputs(self.experiment, self.run_dir, self.names, self.info.progress, extra_metrics(user))
        self.outputs = Outputs(standard, user, lambda given: Checkpointer(self.run_dir, self.strategy, given))
        saved = self.checkpoint.outputs if self.checkpoint is not None else {}
        self.outputs.start(saved)

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
        """The round through every output: the producers' metrics join the record before anything is written."""
        self.outputs.end_round(record)
        self.last_round = record.server_round

    def finish(self) -> dict[str, Any]:
        """The outputs' end of run; what they add to run.json."""
        return self.outputs.finish()

    def close(self) -> None:
        self.outputs.close()


def standard_outputs(
    experiment: Experiment,
    run_dir: Path,
    names: list[str],
    publish: Callable[[dict[str, Any]], None] | None = None,
    extra_metrics: Sequence[str] = (),
) -> list[Callback]:
    """Every run's outputs; `publish` gets run.json's metrics after every round, and rounds.csv has a column for
    each of `extra_metrics` (the user callbacks' round_metrics) after the SPEC's.

    They run by their phases, not by their place here (fedsim.outputs.base.Phase says why each comes where);
    Each one's state in the checkpoint is keyed by its name (fedsim.outputs.base.state_keys).
    """
    settings, attack = experiment.outputs, experiment.attack
    outputs: list[Callback] = [
        WeightScrutiny(run_dir / LAYERS, attack.name, float(attack.node_ratio), enabled=settings.scrutiny),
        ClientsCsv(run_dir / CLIENTS),
    ]
    if settings.archive_mode != "none":
        writer = partial(
            ArchiveWriter,
            run_dir,
            names,
            list(settings.archive_layers),
            settings.archive_dtype,
            settings.archive_max_pending,
        )
        outputs.append(WeightArchive(writer, clients=settings.archive_mode == "all"))
    outputs.append(MemoryProbe())
    if experiment.privacy.enabled:
        outputs.append(
            PrivacyBudget(
                experiment.privacy,
                experiment.strategy,
                settings.num_clients,
                experiment.counts.cohort,
            )
        )
    outputs += [
        RoundsCsv(run_dir / ROUNDS, extra_metrics),
        Progress(settings.num_rounds),
        RunSummary(publish),
        ClientFailures(settings.max_failure_rate),
    ]
    if settings.scrutiny:
        outputs.append(DetectionCsv(run_dir / DETECTION, run_dir / CLIENTS))
    experiment.tracker.bind(run_dir, flatten(experiment.cfg))
    return outputs + [FinalModel(run_dir / MODEL), experiment.tracker, Retries(publish)]

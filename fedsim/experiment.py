"""One federated run, as numbered steps: check, model, data, federate, finish; run.json says how it ended.

`federate` is the only part that differs between runtimes: main.py simulates (fedsim.launch),
and `flwr run` hands the ServerApp a Grid to run the rounds on (fedsim.server_app).
"""

from __future__ import annotations

import logging
import os
import platform
import random
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedsim.archive import ArchiveWriter, check_disk, expected_bytes, select_layers
from fedsim.build import Experiment, build
from fedsim.callbacks import (
    Callback, ClientsCsv, DetectionCsv, FinalModel, MemoryProbe, Progress, RoundsCsv, RunSummary, WeightArchive,
    WeightScrutiny,
)
from fedsim.checks import fit_clients_per_round
from fedsim.data import Loader, load_test, prepare_data
from fedsim.errors import ConfigError
from fedsim.memory import return_freed_buffers_to_os
from fedsim.models import get_weights, layer_names, set_weights
from fedsim.outputs import write_json
from fedsim.record import RoundRecord
from fedsim.train import evaluate


def _versions() -> dict[str, str]:
    """Installed versions, read from package metadata (importing transformers alone takes seconds)."""
    from importlib.metadata import version

    return {"python": platform.python_version(), "torch": torch.__version__,
            **{name: version(name) for name in ("flwr", "ray", "transformers")}}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except OSError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


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


class RunInfo:
    """run.json: says truthfully whether the run is running, completed or failed."""

    def __init__(self, run_dir: Path, cfg: DictConfig) -> None:
        self.path = run_dir / "run.json"
        self.started = time.time()
        self.data = {
            "status": "running", "seed": cfg.seed, "started_at": _now(), "finished_at": None,
            "wall_time_s": None, "num_clients": cfg.num_clients, "num_rounds": cfg.num_rounds,
            "model": cfg.model.name if "model" in cfg else None,
            "strategy": cfg.strategy.get("_target_") if "strategy" in cfg else None,
            "versions": _versions(), "git_commit": _git_commit(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        }
        write_json(self.path, self.data)

    def finish(self, status: str, **fields: Any) -> None:
        self.data.update(status=status, finished_at=_now(), wall_time_s=round(time.time() - self.started, 3), **fields)
        write_json(self.path, self.data)


class Session:
    """A run in progress on the server: the experiment, its model and test split, and its outputs."""

    def __init__(self, experiment: Experiment, run_dir: Path) -> None:
        cfg = self.cfg = experiment.cfg
        self.experiment, self.run_dir = experiment, run_dir
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.device = torch.device("cuda" if cfg.resources.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        self.model = instantiate(cfg.model.net).to(self.device)
        self.names = layer_names(self.model)
        check_archive(cfg, run_dir, self.names, get_weights(self.model))
        self.testloader: Loader | None = None
        self.callbacks: list[Callback] = []

    @property
    def strategy(self):
        return self.experiment.strategy

    @property
    def malicious(self) -> list[int]:
        return self.experiment.malicious

    @property
    def attack_name(self) -> str:
        return self.experiment.attack.name

    def prepare(self) -> None:
        """Read, subset and featurize IMDB once (cached on disk), and load the server's test split."""
        self.testloader = load_test(prepare_data(self.cfg), 4 * self.cfg.client.batch_size)

    def open_outputs(self) -> None:
        self.callbacks = standard_outputs(self.experiment, self.run_dir, self.names) + self.experiment.callbacks

    def initial_weights(self) -> list[np.ndarray]:
        return get_weights(self.model)

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


def standard_outputs(experiment: Experiment, run_dir: Path, names: list[str]) -> list[Callback]:
    """Every run's outputs, in the order they see each round (see fedsim.callbacks)."""
    cfg, attack = experiment.cfg, experiment.attack
    outputs: list[Callback] = [
        WeightScrutiny(run_dir / "layers.csv", attack.name, float(attack.node_ratio), enabled=cfg.scrutiny),
        ClientsCsv(run_dir / "clients.csv"),
    ]
    if cfg.archive.mode != "none":
        writer = ArchiveWriter(run_dir, names, list(cfg.archive.layers), cfg.archive.dtype, cfg.archive.max_pending)
        outputs.append(WeightArchive(writer, clients=cfg.archive.mode == "all"))
    outputs += [MemoryProbe(), RoundsCsv(run_dir / "rounds.csv"), Progress(cfg.num_rounds), RunSummary()]
    if cfg.scrutiny:
        outputs.append(DetectionCsv(run_dir / "detection.csv"))
    return outputs + [FinalModel(run_dir / "model.safetensors")]


def check_archive(cfg: DictConfig, run_dir: Path, names: list[str], weights: list[np.ndarray]) -> None:
    """Announce the archive's expected size; refuse the run if no layer matches or the disk cannot hold it."""
    if cfg.archive.mode == "none":
        return
    kept = select_layers(names, list(cfg.archive.layers))
    if not kept:
        raise ConfigError("archive.layers", f"{list(cfg.archive.layers)} match no layer; layers are e.g. {names[:3]}")
    needed = expected_bytes(weights, names, kept, cfg.archive.dtype, cfg.archive.mode, cfg.num_rounds,
                            fit_clients_per_round(cfg))
    print(f"archive: mode={cfg.archive.mode} dtype={cfg.archive.dtype}, {len(kept)}/{len(names)} layers, "
          f"about {needed / 1e9:.2f} GB expected")
    check_disk(run_dir, needed)


def run_experiment(cfg: DictConfig, run_dir: Path, federate: Callable[[Session], None], **parts: Any) -> dict:
    """Run one experiment into `run_dir`; return run.json's content. Raises ConfigError on bad input.

    `parts` go to `build` (a client factory, extra outputs).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    info = RunInfo(run_dir, cfg)
    session: Session | None = None
    try:
        # 1. Check the whole config, then save it fully resolved.
        experiment = build(cfg, **parts)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        info.data.update(attack=experiment.attack.name, malicious_clients=experiment.malicious)
        quiet(cfg.log_level)
        return_freed_buffers_to_os()

        # 2. The seeded initial model; the archive's size checked against the free disk.
        session = Session(experiment, run_dir)

        # 3. Read, subset and featurize IMDB once (cached on disk for later runs).
        session.prepare()

        # 4. Open the outputs and federate.
        session.open_outputs()
        federate(session)

        # 5. Close the books: final model, detection baseline, archive flushed.
        info.finish("completed", **session.finish())
        return info.data
    except BaseException as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        info.finish("failed", error=message, error_type=type(exc).__name__)
        raise
    finally:
        if session is not None:
            session.close()

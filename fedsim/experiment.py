"""One federated run, as numbered steps: check, model, data, federate, finish; run.json says how it ended.

`federate` is the only part that differs between runtimes: main.py simulates (fedsim.launch),
and `flwr run` hands the ServerApp a Grid to run the rounds on (fedsim.server_app).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import socket
import subprocess
import threading
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fedsim.archive import ArchiveWriter, check_disk, expected_bytes, select_layers
from fedsim.build import Experiment, build
from fedsim.callbacks import (
    Callback, ClientFailures, ClientsCsv, DetectionCsv, FinalModel, MemoryProbe, PrivacyBudget, Progress, RoundsCsv,
    RunSummary, WeightArchive, WeightScrutiny,
)
from fedsim.checks import fit_clients_per_round
from fedsim.config import flatten
from fedsim.checkpoint import Checkpoint, Checkpointer, output_key, restore_strategy
from fedsim.data import Loader, load_test, offline_unless_hub_reachable, prepare_data
from fedsim.errors import ConfigError, first_line
from fedsim.interrupts import Interrupted
from fedsim.liveness import HEARTBEAT_S
from fedsim.memory import return_freed_buffers_to_os
from fedsim.models import get_weights, layer_names, set_weights
from fedsim.outputs import write_json
from fedsim.record import LATE, ClientFailure, ClientUpdate, RoundRecord
from fedsim.train import evaluate
from fedsim.transport import transport_of


def _versions() -> dict[str, str]:
    """Installed versions, read from package metadata (importing transformers alone takes seconds)."""
    from importlib.metadata import version

    return {"python": platform.python_version(), "torch": torch.__version__,
            **{name: version(name) for name in ("flwr", "ray", "transformers")}}


def git_commit() -> str | None:
    """The commit of this checkout; a process running from a copy of the app without git (Flower's
    installed app bundle) gets it from FEDSIM_GIT_COMMIT, set by the process that built the bundle."""
    if os.environ.get("FEDSIM_GIT_COMMIT"):
        return os.environ["FEDSIM_GIT_COMMIT"]
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
    """run.json: says truthfully whether the run is running, completed, degraded (completed, but some
    client calls failed), failed or interrupted.

    A resumed run keeps its run.json: the first start, and wall_time_s summed over invocations.
    """

    def __init__(self, run_dir: Path, cfg: DictConfig) -> None:
        self.path = run_dir / "run.json"
        self.started = time.time()
        self.earlier_wall_s = 0.0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        alive = {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat_at": self.started}
        if cfg.get("resume") is not None and self.path.exists():
            self.data = json.loads(self.path.read_text())
            self.earlier_wall_s = float(self.data.get("wall_time_s") or 0.0)
            self.data.update(status="running", finished_at=None, num_rounds=cfg.num_rounds, **alive)
            self.data.setdefault("resumed", []).append({"at": _now(), "from_round": None})
        else:
            self.data = self._fresh(cfg, alive)
        write_json(self.path, self.data)
        threading.Thread(target=self._beat, name="run.json-heartbeat", daemon=True).start()

    def _beat(self) -> None:
        """Refresh heartbeat_at while the run lives (fedsim.liveness tells a killed run by it)."""
        while not self._stopped.wait(HEARTBEAT_S):
            with self._lock:
                if self._stopped.is_set():
                    return
                self.data["heartbeat_at"] = time.time()
                write_json(self.path, self.data)

    def _fresh(self, cfg: DictConfig, alive: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": "running", "runtime": cfg.runtime.name if "runtime" in cfg else "simulation",
            "seed": cfg.seed, "started_at": _now(), "finished_at": None,
            "wall_time_s": None, "num_clients": cfg.num_clients, "num_rounds": cfg.num_rounds,
            "model": cfg.model.name if "model" in cfg else None,
            "strategy": cfg.strategy.get("_target_") if "strategy" in cfg else None,
            "transport": transport_of(cfg),
            "privacy": cfg.privacy.mode if "privacy" in cfg else "none",
            "versions": _versions(), "git_commit": git_commit(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
            **alive,
        }

    def update(self, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)
            write_json(self.path, self.data)

    def _wall_s(self) -> float:
        return round(self.earlier_wall_s + time.time() - self.started, 3)

    def resumed_from(self, server_round: int) -> None:
        """The checkpoint's round this invocation continues after."""
        with self._lock:
            self.data["resumed"][-1]["from_round"] = server_round
            write_json(self.path, self.data)

    def progress(self, summary: dict[str, Any]) -> None:
        """The metrics so far and the wall time to date, after every round."""
        self.update(**summary, wall_time_s=self._wall_s())

    def finish(self, status: str, **fields: Any) -> None:
        with self._lock:
            self._stopped.set()
            self.data.update(status=status, finished_at=_now(), heartbeat_at=time.time(), wall_time_s=self._wall_s(),
                             **fields)
            write_json(self.path, self.data)


def load_model(cfg: DictConfig) -> torch.nn.Module:
    """The seeded initial model; a model that cannot be loaded is bad input, named by its key."""
    name = cfg.model.net.get("name")  # set for nets loaded by name (a directory or a Hub id)
    missing = name is not None and not Path(os.path.expanduser(str(name))).exists()
    if missing:
        offline_unless_hub_reachable()
    try:
        return instantiate(cfg.model.net)
    except Exception as exc:
        where = "no such directory" if missing and str(name).startswith(("/", ".", "~")) else \
            first_line(exc.__cause__ or exc)
        raise ConfigError("model.name", f"cannot load {name!r}: {where}; allowed: a local model directory "
                          "(model.name=/path/to/checkpoint), or a Hub id that is cached or reachable") from None


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
        self.slow = experiment.faults.slow_devices(int(cfg.seed), int(cfg.num_clients))
        self.transport = transport_of(cfg)

    @property
    def first_round(self) -> int:
        """The first round this process runs: 0 (the initial model), or the one after the checkpoint's."""
        return self.checkpoint.server_round + 1 if self.checkpoint is not None else 0

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
        """Start every output, after the checkpoint's round when resuming; the checkpoint writer comes last."""
        outputs = standard_outputs(self.experiment, self.run_dir, self.names, self.info.progress) + \
            self.experiment.callbacks
        self.callbacks = outputs + [Checkpointer(self.run_dir, self.strategy, outputs)]
        saved = self.checkpoint.outputs if self.checkpoint is not None else {}
        for index, callback in enumerate(self.callbacks):
            callback.on_run_start(saved.get(output_key(index, callback)) if self.checkpoint is not None else None)

    def initial_weights(self) -> list[np.ndarray]:
        """The weights the first round starts from: the seeded model's, or the checkpoint's."""
        return self.checkpoint.weights if self.checkpoint is not None else get_weights(self.model)

    def missed(self, client_id: int, status: str, error: str | None = None,
               sim_time_s: float | None = None) -> ClientFailure:
        """A client call that brought no usable reply, with the client's ground truth."""
        malicious = client_id in self.malicious
        return ClientFailure(client_id=client_id, status=status, error=error, is_malicious=malicious,
                             attack=self.attack_name if malicious else "none", sim_time_s=sim_time_s)

    def clock(self, server_round: int, updates: list[ClientUpdate]) -> tuple[list[ClientUpdate], list[ClientFailure]]:
        """The updates on time by the simulated clock, and the late ones (fedsim.faults)."""
        faults = self.experiment.faults
        if not faults.clocked:
            return updates, []
        on_time, late = [], []
        for update in updates:
            update.sim_time_s = faults.sim_time(self.cfg.seed, server_round, update.client_id, update.num_examples,
                                                int(self.cfg.client.local_epochs), update.client_id in self.slow)
            if faults.late(update.sim_time_s):
                late.append(self.missed(update.client_id, LATE, sim_time_s=update.sim_time_s))
            else:
                on_time.append(update)
        return on_time, late

    def sim_round_time(self, on_time: list[ClientUpdate], late: list[ClientFailure]) -> float | None:
        """The round's simulated duration: the slowest client on time, or the timeout if any was late."""
        if not self.experiment.faults.clocked:
            return None
        if late:
            return float(self.experiment.faults.round_timeout_s)
        return max((u.sim_time_s for u in on_time), default=0.0)

    def reseed(self, server_round: int) -> None:
        """NumPy's global generator from (seed, round), before the strategy aggregates: what it draws there
        (Flower's DP noise) is the same in a resumed run."""
        np.random.seed([int(self.cfg.seed) % 2**32, server_round])

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


def standard_outputs(experiment: Experiment, run_dir: Path, names: list[str],
                     publish: Callable[[dict[str, Any]], None] | None = None) -> list[Callback]:
    """Every run's outputs, in the order they see each round (see fedsim.callbacks); `publish` gets
    run.json's metrics after every round."""
    cfg, attack = experiment.cfg, experiment.attack
    outputs: list[Callback] = [
        WeightScrutiny(run_dir / "layers.csv", attack.name, float(attack.node_ratio), enabled=cfg.scrutiny),
        ClientsCsv(run_dir / "clients.csv"),
    ]
    if cfg.archive.mode != "none":
        writer = partial(ArchiveWriter, run_dir, names, list(cfg.archive.layers), cfg.archive.dtype,
                         cfg.archive.max_pending)
        outputs.append(WeightArchive(writer, clients=cfg.archive.mode == "all"))
    outputs.append(MemoryProbe())
    if experiment.privacy.enabled:
        outputs.append(PrivacyBudget(experiment.privacy, experiment.strategy, int(cfg.num_clients),
                                     fit_clients_per_round(cfg)))
    outputs += [RoundsCsv(run_dir / "rounds.csv"), Progress(cfg.num_rounds), RunSummary(publish),
                ClientFailures(float(cfg.faults.max_failure_rate))]
    if cfg.scrutiny:
        outputs.append(DetectionCsv(run_dir / "detection.csv", run_dir / "clients.csv"))
    experiment.tracker.bind(run_dir, flatten(cfg))
    return outputs + [FinalModel(run_dir / "model.safetensors"), experiment.tracker]


def check_space(cfg: DictConfig, run_dir: Path, names: list[str], weights: list[np.ndarray]) -> None:
    """Refuse a run whose files would not fit the disk: the archive (announced with its size), the final
    model, and the checkpoint (the model and up to three strategy arrays per weight, e.g. FedAdam's
    moments) with its replacement written beside it."""
    model_bytes = sum(w.nbytes for w in weights)
    needed = model_bytes + 2 * 4 * model_bytes
    if cfg.archive.mode != "none":
        kept = select_layers(names, list(cfg.archive.layers))
        if not kept:
            raise ConfigError("archive.layers", f"{list(cfg.archive.layers)} match no layer; layers are e.g. "
                              f"{names[:3]}")
        archive = expected_bytes(weights, names, kept, cfg.archive.dtype, cfg.archive.mode, cfg.num_rounds,
                                 fit_clients_per_round(cfg))
        print(f"archive: mode={cfg.archive.mode} dtype={cfg.archive.dtype}, {len(kept)}/{len(names)} layers, "
              f"about {archive / 1e9:.2f} GB expected")
        needed += archive
    check_disk(run_dir, needed)


def preflight(cfg: DictConfig) -> None:
    """What a run checks before its first round, for a runtime whose server starts in another process:
    the config, the model and the data (featurized into the cache the server then reads). ConfigError on bad input."""
    build(cfg)
    load_model(cfg)
    prepare_data(cfg)


def record_stopped(run_dir: Path, cfg: DictConfig, exc: BaseException) -> None:
    """run.json of a run whose server ran in another process and did not finish: interrupted (a signal) or
    failed, unless the server itself recorded the failure or finished."""
    path = run_dir / "run.json"
    status = "interrupted" if isinstance(exc, Interrupted) else "failed"
    if not path.exists():
        RunInfo(run_dir, cfg).finish(status, error=first_line(exc), error_type=type(exc).__name__)
        return
    data = json.loads(path.read_text())
    if data["status"] == "running" or (status == "interrupted" and data["status"] == "failed"):
        data.update(status=status, finished_at=_now(), error=first_line(exc), error_type=type(exc).__name__)
        write_json(path, data)


def run_experiment(cfg: DictConfig, run_dir: Path, federate: Callable[[Session], None], **parts: Any) -> dict:
    """Run one experiment into `run_dir`; return run.json's content. Raises ConfigError on bad input.

    `parts` go to `build` (a client factory, extra outputs).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    # 1. Check the whole config (a refused resume leaves the stopped run untouched), then save it resolved.
    try:
        experiment = build(cfg, **parts)
    except ConfigError as exc:
        if cfg.get("resume") is None:
            RunInfo(run_dir, cfg).finish("failed", error=str(exc), error_type=type(exc).__name__)
        raise
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # first: what a resume reads
    info = RunInfo(run_dir, cfg)
    session: Session | None = None
    try:
        info.update(attack=experiment.attack.name, malicious_clients=experiment.malicious)
        quiet(cfg.log_level)
        return_freed_buffers_to_os()

        # 2. The seeded initial model; the archive's size checked against the free disk.
        session = Session(experiment, run_dir, info)
        if session.checkpoint is not None:
            info.resumed_from(session.checkpoint.server_round)

        # 3. Read, subset and featurize IMDB once (cached on disk for later runs).
        session.prepare()

        # 4. Open the outputs and federate.
        session.open_outputs()
        federate(session)

        # 5. Close the books: final model, detection baseline, archive flushed.
        summary = session.finish()
        info.finish("degraded" if summary.get("client_failures") else "completed", **summary)
        return info.data
    except BaseException as exc:  # run.json already has the metrics of every round that ended (RunSummary)
        info.finish("interrupted" if isinstance(exc, Interrupted) else "failed", error=first_line(exc),
                    error_type=type(exc).__name__)
        raise
    finally:
        if session is not None:
            session.close()

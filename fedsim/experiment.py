"""One federated run, as numbered steps: check, prepare data, build the server, simulate, finish."""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from flwr.common import ndarrays_to_parameters
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.numpy import save_file

from fedsim.archive import ArchiveWriter, check_disk, expected_bytes, select_layers
from fedsim.attacks import malicious_clients
from fedsim.checks import check_strategy, fit_clients_per_round, validate
from fedsim.client import ClientSettings, make_client_fn
from fedsim.data import load_test, prepare_data
from fedsim.detection import DETECTION_COLUMNS, detection_rows, mean_auc
from fedsim.errors import ConfigError
from fedsim.memory import return_freed_buffers_to_os
from fedsim.models import get_weights, layer_names
from fedsim.outputs import CLIENTS_COLUMNS, ROUNDS_COLUMNS, CsvLog, write_csv, write_json
from fedsim.scrutiny import LAYER_COLUMNS
from fedsim.server import RunRecorder, fit_config, make_evaluate_fn, weighted_average


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
    """Flower flags run_simulation as deprecated on every run; it is the API this harness is asked to use."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in record.getMessage()


def _quiet(log_level: str) -> None:
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

    def finish(self, status: str, **fields) -> None:
        self.data.update(status=status, finished_at=_now(), wall_time_s=round(time.time() - self.started, 3), **fields)
        write_json(self.path, self.data)


def final_metrics(rows: list[dict]) -> dict:
    central = [r["central_accuracy"] for r in rows if r.get("central_accuracy") is not None]
    last = rows[-1] if rows else {}
    return {
        "final_central_accuracy": central[-1] if central else None,
        "best_central_accuracy": max(central) if central else None,
        "final_central_loss": last.get("central_loss"),
        "final_fed_accuracy": last.get("fed_accuracy"),
        "rounds_completed": max((r["round"] for r in rows), default=0),
    }


def run_experiment(cfg: DictConfig, run_dir: Path) -> dict:
    """Run one experiment into `run_dir`; return run.json's content. Raises ConfigError on bad input."""
    run_dir.mkdir(parents=True, exist_ok=True)
    info = RunInfo(run_dir, cfg)
    rounds_log = clients_log = layers_log = archive = None
    try:
        # 1. Check the config and save it, fully resolved.
        validate(cfg)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        _quiet(cfg.log_level)
        return_freed_buffers_to_os()

        # 2. Read, subset and featurize IMDB once (cached on disk for later runs).
        prepared = prepare_data(cfg)

        # 3. Build the server side: seeded initial model, central evaluation, strategy.
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        device = torch.device("cuda" if cfg.resources.num_gpus > 0 and torch.cuda.is_available() else "cpu")
        model = instantiate(cfg.model.net).to(device)
        strategy = instantiate(
            cfg.strategy,
            initial_parameters=ndarrays_to_parameters(get_weights(model)),
            evaluate_fn=make_evaluate_fn(model, load_test(prepared, 4 * cfg.client.batch_size), device),
            on_fit_config_fn=fit_config,
            fit_metrics_aggregation_fn=weighted_average,
            evaluate_metrics_aggregation_fn=weighted_average,
        )
        check_strategy(strategy, cfg)
        attack = instantiate(cfg.attack)
        malicious = malicious_clients(attack.node_ratio, cfg.num_clients, cfg.seed) \
            if attack.poisons_data or attack.poisons_model else []
        info.data.update(attack=attack.name, malicious_clients=malicious)
        names = layer_names(model)
        archive = open_archive(cfg, run_dir, names, get_weights(model))
        rounds_log = CsvLog(run_dir / "rounds.csv", ROUNDS_COLUMNS)
        clients_log = CsvLog(run_dir / "clients.csv", CLIENTS_COLUMNS)
        layers_log = CsvLog(run_dir / "layers.csv", LAYER_COLUMNS)
        recorder = RunRecorder(strategy, rounds_log, clients_log, layers_log, names, cfg.num_rounds,
                               archive=archive, archive_clients=cfg.archive.mode == "all", malicious=malicious,
                               attack=attack.name, node_ratio=float(attack.node_ratio), scrutiny=cfg.scrutiny)

        # 4. Simulate with Flower's Ray backend; one model per client actor, reused across rounds.
        settings = ClientSettings(
            prepared=prepared,
            net=json.dumps(OmegaConf.to_container(cfg.model.net, resolve=True)),
            optimizer=json.dumps(OmegaConf.to_container(cfg.model.optimizer, resolve=True)),
            local_epochs=cfg.client.local_epochs,
            batch_size=cfg.client.batch_size,
            lr=float(cfg.client.lr),
            num_threads=max(1, int(cfg.resources.num_cpus)),
            use_gpu=cfg.resources.num_gpus > 0,
            seed=cfg.seed,
            log_level=cfg.log_level,
            attack=json.dumps(OmegaConf.to_container(cfg.attack, resolve=True)),
            malicious=tuple(malicious),
        )
        simulate(recorder, settings, cfg)
        recorder.close_round()

        # 5. Save the final global model, score the detection baseline, flush the archive, close the books.
        save_file(dict(zip(names, get_weights(model))), str(run_dir / "model.safetensors"))
        detection = detection_rows(recorder.client_rows) if cfg.scrutiny else []
        if detection:
            write_csv(run_dir / "detection.csv", pd.DataFrame(detection, columns=DETECTION_COLUMNS))
            info.data["detection_auc"] = mean_auc(detection)
        if archive is not None:
            archive.close()
        info.finish("completed", **final_metrics(recorder.rows))
        return info.data
    except BaseException as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        info.finish("failed", error=message, error_type=type(exc).__name__)
        raise
    finally:
        if archive is not None:
            archive.close()
        for log in (rounds_log, clients_log, layers_log):
            if log is not None:
                log.close()


def open_archive(cfg: DictConfig, run_dir: Path, names: list[str], weights: list[np.ndarray]) -> ArchiveWriter | None:
    """Announce the archive's expected size, refuse the run if the disk cannot hold it, start the writer."""
    if cfg.archive.mode == "none":
        return None
    kept = select_layers(names, list(cfg.archive.layers))
    if not kept:
        raise ConfigError("archive.layers", f"{list(cfg.archive.layers)} match no layer; layers are e.g. {names[:3]}")
    needed = expected_bytes(weights, names, kept, cfg.archive.dtype, cfg.archive.mode, cfg.num_rounds,
                            fit_clients_per_round(cfg))
    print(f"archive: mode={cfg.archive.mode} dtype={cfg.archive.dtype}, {len(kept)}/{len(names)} layers, "
          f"about {needed / 1e9:.2f} GB expected")
    check_disk(run_dir, needed)
    return ArchiveWriter(run_dir, names, list(cfg.archive.layers), cfg.archive.dtype, cfg.archive.max_pending)


def backend_config(cfg: DictConfig) -> dict:
    """Flower's Ray backend settings: each client actor's CPU and (fractional) GPU share."""
    verbose = logging.getLevelNamesMapping()[cfg.log_level] <= logging.INFO
    return {
        "client_resources": {"num_cpus": float(cfg.resources.num_cpus), "num_gpus": float(cfg.resources.num_gpus)},
        "init_args": {"logging_level": cfg.log_level, "log_to_driver": verbose, "include_dashboard": False},
    }


def simulate(strategy, settings: ClientSettings, cfg: DictConfig) -> None:
    """Flower's run_simulation with a ClientApp and a ServerApp on the Ray backend."""
    from flwr.client import ClientApp
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.simulation import run_simulation

    components = ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=cfg.num_rounds))
    run_simulation(
        server_app=ServerApp(server_fn=lambda context: components),
        client_app=ClientApp(client_fn=make_client_fn(settings)),
        num_supernodes=cfg.num_clients,
        backend_name="ray",
        backend_config=backend_config(cfg),
        verbose_logging=cfg.log_level == "DEBUG",
    )

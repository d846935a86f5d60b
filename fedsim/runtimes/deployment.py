"""Flower's deployment runtime on this machine (`runtime=deployment`): main.py checks the config and data,
starts the federation, submits the run with `flwr run`, relays its output and stops every process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from fedsim.config.compose import CONFIG_FILE_KEY, RUN_DIR_KEY
from fedsim.run.steps import preflight, record_or_note, record_stopped
from fedsim.rundir import CONFIG, FINISHED, LOGS, read_info
from fedsim.runtimes.federation import LocalFederation
from fedsim.system.errors import ConfigError, RunFailed
from fedsim.system.signals import raise_on_signals


@dataclass
class Deployment:
    """Flower's deployment runtime on this machine: SuperLink, one SuperNode per client, `flwr run`.

    The ServerApp (a process of the SuperLink's) writes the run directory; this process checks the
    config and data first, relays the run's output, and stops every process at the end.
    """

    name: str = "deployment"
    host: str = "127.0.0.1"
    port: int | None = None
    certificates: str | None = None
    node_auth: bool = True
    startup_timeout_s: float = 60.0
    reply_timeout_s: float = 3600.0
    max_restarts: int = 2  # SuperNodes started again after they died (fedsim.runtimes.federation)

    def federation(self, cfg: DictConfig, run_dir: Path) -> LocalFederation:
        return LocalFederation(
            int(cfg.num_clients),
            run_dir / LOGS,
            host=self.host,
            port=self.port,
            certificates=self.certificates,
            node_auth=self.node_auth,
            startup_timeout_s=self.startup_timeout_s,
            verbose=logging.getLevelNamesMapping()[cfg.log_level] <= logging.INFO,
            max_restarts=self.max_restarts,
        )

    def run(self, cfg: DictConfig, run_dir: Path) -> dict:
        run_dir.mkdir(parents=True, exist_ok=True)
        federation = self.federation(cfg, run_dir)
        try:  # bad input: one line, before any process starts
            preflight(cfg)
            federation.check()
        except ConfigError as exc:
            if cfg.get("resume") is None:
                record_or_note(exc, lambda stopped: record_stopped(run_dir, cfg, stopped))
            raise
        raise_on_signals()
        try:
            with federation:
                config_file = federation.work / CONFIG
                config_file.write_text(OmegaConf.to_yaml(cfg, resolve=True))
                code = federation.run({CONFIG_FILE_KEY: str(config_file), RUN_DIR_KEY: str(run_dir)})
            info = read_info(run_dir) or {"status": None}
            if info["status"] not in FINISHED:
                raise RunFailed(
                    info.get("error")
                    or f"`flwr run` ended with exit code {code} before the run began "
                    f"(see {run_dir / LOGS / 'flwr-run.log'})"
                )
        except BaseException as exc:
            record_or_note(exc, lambda stopped: record_stopped(run_dir, cfg, stopped))
            raise
        return info

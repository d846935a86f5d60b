"""The local federation's environment: Flower's home (its config.toml naming the federation's SuperLink)
and the variables of every process the federation starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fedsim.run.info import git_commit
from fedsim.system.processes import child_env

TASK_POLL_S = 0.1  # a SuperExec's poll for its next ClientApp (fedsim.runtimes.superexec.IDLE_S: the same wait)


def toml_string(value: str) -> str:
    return json.dumps(value)  # a TOML basic string is a JSON string for these values


def flower_home(home: Path, address: str, root_certificates: Path) -> Path:
    """Flower's home in the new folder `home`: `flwr` commands reach the SuperLink at `address`, trusting
    `root_certificates`."""
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedsim"\n\n[superlink.fedsim]\naddress = {toml_string(address)}\n'
        f"root-certificates = {toml_string(str(root_certificates))}\n"
    )
    return home


def federation_env(home: Path, work: Path) -> dict[str, str]:
    """The environment of the federation's processes: Flower's home in `home`, `work` the federation's folder."""
    # The apps run in this environment: no `uv sync` of their dependencies at run time.
    return child_env(
        FLWR_HOME=str(home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FEDSIM_GIT_COMMIT=git_commit() or "",
        FEDSIM_FEDERATION=str(work),
        # How often each SuperNode's SuperExec asks for a ClientApp to start (Flower's default: 1 s).
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL=str(TASK_POLL_S),
        # Flower's usage events: one HTTPS request from every process it starts, a ClientApp for every
        # message; off unless this environment turns them on.
        FLWR_TELEMETRY_ENABLED=os.environ.get("FLWR_TELEMETRY_ENABLED", "0"),
    )

"""`flwr run .` from the repository root, as a Flower user runs fedsim: against a SuperLink in simulation
mode that this test starts, in its own FLWR_HOME, and stops (with everything it spawned) by process group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import pandas as pd
import pytest
from helpers.configs import METRICS, SMALL
from helpers.processes import ours
from helpers.runs import ROOT

from fedsim.runtimes.ports import free_port
from fedsim.system.processes import child_env, command, group_alive

pytestmark = pytest.mark.slow


@pytest.fixture
def superlink(tmp_path):
    """A SuperLink (simulation runtime) on free local ports; yields the environment for `flwr`."""
    home, port = tmp_path / "flwr-home", free_port("127.0.0.1")
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "fedsim-test"\n\n[superlink.fedsim-test]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    # No runtime `uv sync` of the app's dependencies: the apps run in this environment.
    # child_env: this interpreter's scripts first on PATH, where the SuperLink finds flower-superexec by name.
    env = child_env(FLWR_HOME=str(home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    log = open(tmp_path / "superlink.log", "w")
    # A file database: Flower 1.41's in-memory SQLite shares one connection across threads, and a log
    # stream polling it beside the run failed with "cannot commit transaction - SQL statements in progress".
    process = subprocess.Popen(
        [
            command("flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--fleet-api-address",
            f"127.0.0.1:{free_port('127.0.0.1')}",
            "--database",
            str(tmp_path / "state.db"),
            "--disable-runtime-dependency-installation",
        ],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "superlink.log").read_text()
                time.sleep(0.5)
        yield env
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the SuperLink, its SuperExec and any simulation process
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        deadline = time.monotonic() + 30
        while group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not group_alive(process.pid), "processes of the SuperLink's group outlived it"


def raylets() -> set[int]:
    """This test session's raylets (the machine may run other sessions' Ray at the same time)."""
    return {p.pid for p in ours(lambda p: "raylet" in " ".join(p.cmdline()))}


def test_flwr_run_writes_main_pys_run_directory_with_the_same_numbers(superlink, imdb_dir, small_run, tmp_path):
    """`flwr run` of the session's reference run (`small_run`, made by main.py): the same files and numbers."""
    overrides = [f"data.path={imdb_dir}", *SMALL]
    before = raylets()
    result = subprocess.run(
        [
            command("flwr"),
            "run",
            ".",
            "--run-config",
            f'overrides="{" ".join(overrides)}"',
            "--run-config",
            f"results-dir='{tmp_path / 'results'}'",
            "--federation-config",
            "num-supernodes=3 client-resources-num-cpus=1",
            "--stream",
        ],
        cwd=ROOT,
        env=superlink,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "round   2/2" in result.stdout and "done: final central_accuracy" in result.stdout, (
        result.stdout[-2000:] + (tmp_path / "superlink.log").read_text()[-3000:]
    )
    [run_dir] = (tmp_path / "results" / "runs").glob("*/*")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"

    main = small_run
    files = {p.relative_to(run_dir) for p in run_dir.rglob("*") if p.is_file()}
    assert files == {
        p.relative_to(main) for p in main.rglob("*") if p.is_file() if ".hydra" not in p.parts and p.name != "main.log"
    }  # Hydra's own files aside
    pd.testing.assert_frame_equal(
        pd.read_csv(run_dir / "rounds.csv")[METRICS], pd.read_csv(main / "rounds.csv")[METRICS], check_exact=True
    )
    clients = [pd.read_csv(d / "clients.csv").drop(columns=["fit_time_s", "node"]) for d in (run_dir, main)]
    pd.testing.assert_frame_equal(*clients, check_exact=True)
    assert raylets() <= before  # the simulation's Ray stopped with the run

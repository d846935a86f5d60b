"""Ctrl-C and SIGTERM give exactly one line wherever they land; what the dying run's threads and actors
print goes to main.log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.configs import QUICK
from helpers.gates import gated_env, waiting
from helpers.runs import ROOT, assert_group_ends

from fedsim.system.processes import group_alive
from fedsim.system.waits import wait_for

# After a signal, a thread logs through Flower's logger and dies with a traceback, as Flower's worker threads
# do when Ray's actors are stopped under them; the main thread then leaves with its one line.
DYING_THREADS = """
import logging, os, signal, sys, threading
from fedsim.system.signals import Interrupted, leave, raise_on_signals
raise_on_signals(sys.argv[1])
print("before the signal", flush=True)
go = threading.Event()
def worker():
    go.wait()
    logging.getLogger("flwr").error("An exception was raised when processing a message by RayBackend")
    raise RuntimeError("The actor died unexpectedly before finishing this task.")
thread = threading.Thread(target=worker)
thread.start()
try:
    os.kill(os.getpid(), signal.SIGINT)
    signal.pause()
except Interrupted as exc:
    go.set()
    thread.join()
    print("after the signal")
    leave(exc.exit_code, f"{exc}; resume with: ...")
"""


def test_after_a_signal_what_threads_print_goes_to_main_log(tmp_path):
    log = tmp_path / "main.log"
    done = subprocess.run(
        [sys.executable, "-c", DYING_THREADS, str(log)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 130
    assert done.stderr == "interrupted by SIGINT; resume with: ...\n" and done.stdout == "before the signal\n"
    logged = log.read_text()
    assert "processing a message by RayBackend" in logged and "RuntimeError: The actor died" in logged
    assert "after the signal" in logged


@pytest.mark.slow
@pytest.mark.parametrize(
    "where, hold, signum, group",
    [
        ("start-up", "model.net._target_=helpers.gates.bow_after_gate", signal.SIGINT, True),
        ("mid-training", "model.optimizer._target_=helpers.gates.adam_after_gate", signal.SIGINT, True),
        ("mid-training", "model.optimizer._target_=helpers.gates.adam_after_gate", signal.SIGTERM, False),
    ],
)
def test_a_signal_anywhere_gives_one_line_a_resumable_run_and_no_process_left(
    where, hold, signum, group, imdb_dir, tmp_path
):
    """Ctrl-C reaches main.py's whole process group (a terminal's); SIGTERM only main.py (a scheduler's)."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    process = subprocess.Popen(
        [sys.executable, "main.py", f"hydra.run.dir={run_dir}", f"data.path={imdb_dir}", *QUICK, hold],
        cwd=ROOT,
        env=gated_env(gate),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: waiting(gate) or process.poll() is not None,
            timeout_s=300,
            what=f"the run's {where}",
            key="the test",
        )
        assert process.poll() is None, process.communicate()
        (os.killpg if group else os.kill)(process.pid, signum)
        out, err = process.communicate(timeout=120)
        assert_group_ends(process)
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum
    assert err == f"interrupted by {name}; resume with: python main.py resume={run_dir}\n", err[-3000:]
    assert "Traceback" not in out and "ERROR" not in out and "round   1/" not in out, out[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["error"] == f"interrupted by {name}"
    assert Path(run_dir / "config.yaml").exists()  # what resume= reads

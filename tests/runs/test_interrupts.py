"""Ctrl-C and SIGTERM give exactly one line wherever they land; what the dying run's threads and actors
print goes to main.log."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.configs import QUICK
from helpers.gates import gated_env, waiting
from helpers.runs import ROOT, assert_group_ends

from fedsim.run.steps import record_or_note
from fedsim.system.processes import group_alive
from fedsim.system.signals import Interrupted
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


def dying_threads(log: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", DYING_THREADS, str(log)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_after_a_signal_what_threads_print_goes_to_main_log(tmp_path):
    log = tmp_path / "main.log"
    done = dying_threads(log)
    assert done.returncode == 130
    assert done.stderr == "interrupted by SIGINT; resume with: ...\n" and done.stdout == "before the signal\n"
    logged = log.read_text()
    assert "processing a message by RayBackend" in logged and "RuntimeError: The actor died" in logged
    assert "after the signal" in logged


def test_a_closed_terminal_stops_a_run_as_a_signal_does(tmp_path):
    """SIGHUP (the terminal closed, an ssh session lost) is one of the signals that stop a run recorded: the same
    path as Ctrl-C's (whole runs: below), exit 128 + 1."""
    done = subprocess.run(
        [sys.executable, "-c", DYING_THREADS.replace("signal.SIGINT", "signal.SIGHUP"), str(tmp_path / "main.log")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 129 and done.stderr == "interrupted by SIGHUP; resume with: ...\n"


def test_after_a_signal_with_the_run_directory_gone_the_terminal_still_gets_one_line(tmp_path):
    """main.log cannot be opened (a sweep's clean-up removed the directory): what the threads print is lost,
    not shown."""
    done = dying_threads(tmp_path / "gone" / "main.log")
    assert done.returncode == 130
    assert done.stderr == "interrupted by SIGINT; resume with: ...\n" and done.stdout == "before the signal\n"
    assert not (tmp_path / "gone").exists()


ADAM_GATE = "model.optimizer._target_=helpers.gates.adam_after_gate"


def held_run(run_dir: Path, gate: Path, imdb_dir: Path, hold: str, where: str) -> subprocess.Popen:
    """main.py in its own process group, returned once one of its processes waits at `gate` (`hold`)."""
    process = subprocess.Popen(
        [sys.executable, "main.py", f"hydra.run.dir={run_dir}", f"data.path={imdb_dir}", *QUICK, hold],
        cwd=ROOT,
        env=gated_env(gate),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    wait_for(
        lambda: waiting(gate) or process.poll() is not None,
        timeout_s=300,
        what=f"the run's {where}",
        key="the test",
    )
    assert process.poll() is None, process.communicate()
    return process


def stopped(process: subprocess.Popen, signum: int, group: bool) -> tuple[str, str]:
    """Send `signum` to main.py (or its group); its output once it and every process it started are gone."""
    try:
        (os.killpg if group else os.kill)(process.pid, signum)
        out, err = process.communicate(timeout=120)
        assert_group_ends(process)
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    return out, err


@pytest.mark.slow
@pytest.mark.parametrize(
    "where, hold, signum, group",
    [
        ("start-up", "model.net._target_=helpers.gates.bow_after_gate", signal.SIGINT, True),
        ("mid-training", ADAM_GATE, signal.SIGINT, True),
        ("mid-training", ADAM_GATE, signal.SIGTERM, False),
    ],
)
def test_a_signal_anywhere_gives_one_line_a_resumable_run_and_no_process_left(
    where, hold, signum, group, imdb_dir, tmp_path
):
    """Ctrl-C reaches main.py's whole process group (a terminal's); SIGTERM only main.py (a scheduler's)."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    out, err = stopped(held_run(run_dir, gate, imdb_dir, hold, where), signum, group)
    name = signal.Signals(signum).name
    assert err == f"interrupted by {name}; resume with: python main.py resume={run_dir}\n", err[-3000:]
    assert "Traceback" not in out and "ERROR" not in out and "round   1/" not in out, out[-3000:]
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["error"] == f"interrupted by {name}"
    assert Path(run_dir / "config.yaml").exists()  # what resume= reads


@pytest.mark.slow
def test_a_signal_after_the_run_directory_was_removed_still_ends_the_run(imdb_dir, tmp_path):
    """The run directory removed under a running main.py (a sweep's clean-up), then SIGTERM: run.json
    cannot be written, yet main.py ends with its one line and no process left. It used to wait forever
    on its way out for Flower's ServerApp thread, which waits for replies that never come."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    process = held_run(run_dir, gate, imdb_dir, ADAM_GATE, "mid-training")
    shutil.rmtree(run_dir)
    out, err = stopped(process, signal.SIGTERM, group=False)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    *before, last = err.splitlines()
    assert last == f"interrupted by SIGTERM; its run directory {run_dir} is gone: nothing to resume", err[-3000:]
    assert all(line.startswith("warning: run.json's heartbeat stopped: ") for line in before), err[-3000:]
    assert not run_dir.exists()


def test_a_record_that_cannot_be_written_is_a_note_on_how_the_run_ended(tmp_path):
    exc = Interrupted(signal.SIGTERM)
    record_or_note(exc, lambda _: (tmp_path / "gone" / "run.json").write_text("{}"))
    assert exc.__notes__ == [
        f"run.json could not be written: [Errno 2] No such file or directory: '{tmp_path / 'gone' / 'run.json'}'"
    ]
    record_or_note(exc, lambda _: (tmp_path / "run.json").write_text("{}"))
    assert len(exc.__notes__) == 1 and (tmp_path / "run.json").exists()

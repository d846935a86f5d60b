"""Running fedsim as a test needs it: main.py as a process (its output, its rounds; held at a gate where a test
lands a signal or a kill: helpers.gates), or the loop in-process on a LocalGrid (no Ray, no SuperLink)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from flwr.app import Context, RecordDict

from fedsim.client.app import make_client_app
from fedsim.outputs.base import Callback
from fedsim.run.server_app import make_server_app
from fedsim.run.steps import run_experiment
from fedsim.system.processes import group_alive
from fedsim.system.waits import wait_for
from helpers.gates import ADAM_GATE, gated_env, waiting
from helpers.local_grid import LocalGrid

ROOT = Path(__file__).resolve().parents[2]


def main_py(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python main.py ARGS` to its end, its output captured."""
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def run_main(run_dir: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python main.py hydra.run.dir=RUN_DIR OVERRIDES` to its end."""
    return main_py(f"hydra.run.dir={run_dir}", *overrides, env=env, timeout=600)


# SCRIPT run as __main__ in a fork of one interpreter that has run its module body (its imports) once, per argv in
# the JSON on stdin: each fork's stdout and stderr go to files, its exit status is recorded; what the interpreter
# itself printed is its own output.
FORKS = """
import json, os, runpy, sys
script, folder, argvs = sys.argv[1], sys.argv[2], json.load(sys.stdin)
runpy.run_path(script, run_name="__imports__")
codes = []
for i, argv in enumerate(argvs):
    sys.stdout.flush(), sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for fd, name in ((1, "out"), (2, "err")):
            os.dup2(os.open(os.path.join(folder, f"{i}.{name}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = [script, *argv]
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as end:
            code = end.code if isinstance(end.code, int) else 1
        else:
            code = 0
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
with open(os.path.join(folder, "codes.json"), "w") as out:
    json.dump(codes, out)
"""


def forked(script: str, argvs: list[list[str]], folder: Path) -> list[subprocess.CompletedProcess]:
    """`python SCRIPT ARGV` for each ARGV (SCRIPT: main.py, run_and_collect.py), each to its end, its output
    captured: SCRIPT as __main__ in a fork of one interpreter that ran its imports, so they are paid once (for
    invocations that end before a run starts: refusals). The interpreter's own output must be empty, as the
    script's would be."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-c", FORKS, script, str(folder)], cwd=ROOT, input=json.dumps(argvs),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0 and not done.stdout and not done.stderr, done.stdout[-2000:] + done.stderr[-2000:]
    codes = json.loads((folder / "codes.json").read_text())
    return [
        subprocess.CompletedProcess(
            [script, *argv], code, (folder / f"{i}.out").read_text(), (folder / f"{i}.err").read_text()
        )
        for i, (argv, code) in enumerate(zip(argvs, codes, strict=True))
    ]


def collect(root: Path, *args: str, **popen) -> subprocess.Popen:
    """`python run_and_collect.py --root ROOT ARGS`, its output (stdout and stderr) piped."""
    return subprocess.Popen(
        [sys.executable, "run_and_collect.py", "--root", str(root), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def start_main(run_dir: Path, *overrides: str) -> subprocess.Popen:
    """main.py in its own process group, so that the test can kill everything it started."""
    return subprocess.Popen(
        [sys.executable, "main.py", f"hydra.run.dir={run_dir}", *overrides],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for_round(process: subprocess.Popen, server_round: int) -> str:
    """main.py's output up to its line for `server_round`."""
    seen = ""
    for line in process.stdout:
        seen += line
        if line.startswith(f"round {server_round:>3}/"):
            return seen
    raise AssertionError(f"main.py ended before round {server_round}:\n{seen[-3000:]}")


def assert_group_ends(process: subprocess.Popen) -> None:
    """Every process main.py started (Ray, Flower) is gone soon after it exits."""
    wait_for(
        lambda: not group_alive(process.pid),
        timeout_s=30,
        what="main.py's processes to end",
        key="the test",
        poll_s=0.5,
    )


def server_context(run_config: dict | None = None) -> Context:
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config or {})


def run_locally(cfg, run_dir: Path, node_seed: int = 0, slots: int | None = None, **parts) -> LocalGrid:
    """main.py's steps with the rounds on a LocalGrid instead of Flower's simulation (one node per client, or a
    pool of `slots` nodes); the grid used."""
    grids: list[LocalGrid] = []

    def federate(session) -> None:
        experiment = session.experiment
        grids.append(
            LocalGrid(
                make_client_app(experiment.client_fn, experiment.run_config), slots or cfg.num_clients, seed=node_seed
            )
        )
        make_server_app(session, slots)(grids[0], server_context())

    run_experiment(cfg, run_dir, federate, **parts)
    return grids[0]


class Crash(Callback):
    """Stands in for a kill: the run dies after writing round `at`'s rows, before its checkpoint."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_round_end(self, record) -> None:
        if record.server_round == self.at:
            raise KeyboardInterrupt


def gated(args: list[str], gate: Path, open_from: int, **env: str) -> subprocess.Popen:
    """`python main.py ARGS` whose clients wait at `gate` from ticket `open_from` on (ARGS or the resumed run's
    config names a gated target: helpers.gates), in its own process group, its output (stdout and stderr) piped;
    returned once a client waits."""
    process = subprocess.Popen(
        [sys.executable, "main.py", *args],
        cwd=ROOT,
        env=gated_env(gate, open_from, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    wait_for(lambda: waiting(gate) or process.poll() is not None, timeout_s=300, what="a client at a gate", key="-")
    assert process.poll() is None, process.communicate()[0][-3000:]
    return process


def gated_main(run_dir: Path, gate: Path, open_from: int, *overrides: str) -> subprocess.Popen:
    """main.py into `run_dir` whose clients wait at `gate` as they start training (see `gated`)."""
    return gated([f"hydra.run.dir={run_dir}", ADAM_GATE, *overrides], gate, open_from)


def next_raylet_at_gate(gate: Path, killed: psutil.Process) -> psutil.Process:
    """The raylet of the Ray instance that replaced the one `killed` (a raylet, dead or dying), once a client of
    the new instance waits at `gate`: Ray's workers are the raylet's children, so a mark the old instance's
    clients left, or a late one of theirs, is never taken for it."""

    def found() -> psutil.Process | None:
        for mark in gate.glob("waiting_*"):
            with contextlib.suppress(psutil.Error):
                parent = psutil.Process(int(mark.name.split("_")[1])).parent()
                if parent is not None and parent.pid != killed.pid and "raylet/raylet" in " ".join(parent.cmdline()):
                    return parent
        return None

    wait_for(lambda: found() is not None, timeout_s=300, what="a client of the new Ray instance at a gate", key="-")
    raylet = found()
    assert raylet is not None
    return raylet


def read_until(process: subprocess.Popen, text: str) -> str:
    """`process`'s output up to and with the first line that has `text`."""
    seen = ""
    for line in process.stdout:
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"no line with {text!r}:\n{seen[-3000:]}")


def waiting_actor(gate: Path) -> int:
    """The pid of a client actor waiting at the gate."""
    return min(int(path.name.split("_")[1]) for path in gate.glob("waiting_*"))


def ray_process(main: subprocess.Popen, named: str) -> psutil.Process:
    """The process of main.py's Ray instance whose command line has `named` (the raylet, the dashboard agent)."""
    found = [p for p in psutil.Process(main.pid).children(recursive=True) if named in " ".join(p.cmdline())]
    assert found, f"no {named} under main.py"
    return found[0]


def finished(process: subprocess.Popen, gate: Path, until: str | None = None, seen: str = "") -> str:
    """main.py's whole output (after `seen`, what was read of it before) once it and every process it started
    have ended; the gate opened at once, or once a line has `until` in it."""
    try:
        if until is None:
            (gate / "open").touch()
        for line in process.stdout:
            seen += line
            if until is not None and until in line:
                (gate / "open").touch()
        process.wait(timeout=300)
        assert_group_ends(process)
    finally:
        if group_alive(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    return seen


def only_fedsims_lines(output: str) -> bool:
    """Whether the terminal got fedsim's lines only: none of Ray's notices, Flower's ERROR lines, tracebacks."""
    fedsims = ("archive:", "round ", "warning:", "error:", "done")
    return all(line.startswith(fedsims) for line in output.splitlines() if line)


def terminal_warnings(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("warning:", "error:"))]

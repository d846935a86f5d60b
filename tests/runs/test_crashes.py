"""A crashed worker costs time, not results: a client actor killed mid-round is replaced and its work redone,
a Ray node killed mid-round is replaced and the run resumes by itself, each with one line on the terminal;
beyond their budgets, one line says what was lost. The kills land while clients wait at a gate
(tests/helpers/gates.py), so where they land is known without timing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import psutil
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from helpers.configs import QUICK, SMALL, TIMING
from helpers.gates import gated_env, waiting
from helpers.runs import ROOT, assert_group_ends, run_main

from fedsim.messages.carried import answers, carry, pack
from fedsim.messages.retries import RETRIES, Retried, mark_retried, take_retries
from fedsim.outputs.retried_work import Retries
from fedsim.runtimes.recovery import crash_line
from fedsim.server.record import Redone, RoundRecord
from fedsim.system.processes import group_alive
from fedsim.system.waits import wait_for

ADAM_GATE = "model.optimizer._target_=helpers.gates.adam_after_gate"
RETRY_COLUMNS = ["retries", "retry_reason"]


def test_a_carried_replys_retries_hold_for_every_client_it_carries(task_identity):
    sent = Message(carry(RecordDict(), [3, 5], 8), dst_node_id=1, message_type="train")
    replies = [Message(RecordDict({"metrics": MetricRecord({"num-examples": p})}), reply_to=sent) for p in (3, 5)]
    reply = Message(pack(replies), reply_to=sent)
    mark_retried(reply, Retried(2, "the Ray worker (pid 9) died (SYSTEM_ERROR)"))
    split = answers(reply, sent, [3, 5])
    for partition in (3, 5):
        assert take_retries(split[partition]) == Retried(2, "the Ray worker (pid 9) died (SYSTEM_ERROR)")
        assert RETRIES not in split[partition].content  # taken off before a strategy sees the reply
        assert int(split[partition].content["metrics"]["num-examples"]) == partition
    assert take_retries(Message(RecordDict({"arrays": ArrayRecord()}), reply_to=sent)) == Retried()


def test_a_dead_actors_report_becomes_one_line_naming_its_process():
    text = (
        "The actor died unexpectedly before finishing this task.\n\tclass_name: ClientAppActor\n\tpid: 8314\n"
        "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: ..."
    )
    assert crash_line(RuntimeError(text)) == "the Ray worker (pid 8314) died (SYSTEM_ERROR)"
    assert crash_line(RuntimeError("The actor died.")) == "the Ray worker died"


def test_run_json_lists_each_message_redone_and_keeps_the_list_across_a_resume():
    published: list[dict] = []
    retries = Retries(published.append)
    retries.on_run_start(None)
    record = RoundRecord(2, [], None, [], [], {})
    record.redone = [Redone(0, "train", 1, "died"), Redone(2, "train", 1, "died"), Redone(1, "evaluate", 2, "x")]
    retries.on_round_end(record)
    retries.on_round_end(RoundRecord(3, [], None, [], [], {}))  # a round without crashes adds nothing
    assert published == [
        {
            "retries": [
                {"round": 2, "phase": "train", "clients": [0, 2], "retries": 1, "reason": "died"},
                {"round": 2, "phase": "evaluate", "clients": [1], "retries": 2, "reason": "x"},
            ],
            "client_retries": 4,
        }
    ]
    resumed = Retries()
    resumed.on_run_start(retries.state())
    summary: dict = {}
    resumed.on_run_end(summary)
    assert summary == published[0]


def gated_main(run_dir: Path, gate: Path, open_from: int, *overrides: str) -> subprocess.Popen:
    """main.py whose clients wait at `gate` from ticket `open_from` on, in its own process group, its output (stdout
    and stderr) piped; returned once a client waits."""
    process = subprocess.Popen(
        [sys.executable, "main.py", f"hydra.run.dir={run_dir}", ADAM_GATE, *overrides],
        cwd=ROOT,
        env=gated_env(gate, open_from),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    wait_for(lambda: waiting(gate) or process.poll() is not None, timeout_s=300, what="a client at a gate", key="-")
    assert process.poll() is None, process.communicate()[0][-3000:]
    return process


def waiting_actor(gate: Path) -> int:
    """The pid of a client actor waiting at the gate."""
    return min(int(path.name.split("_")[1]) for path in gate.glob("waiting_*"))


def ray_process(main: subprocess.Popen, named: str) -> psutil.Process:
    """The process of main.py's Ray instance whose command line has `named` (the raylet, the dashboard agent)."""
    found = [p for p in psutil.Process(main.pid).children(recursive=True) if named in " ".join(p.cmdline())]
    assert found, f"no {named} under main.py"
    return found[0]


def finished(process: subprocess.Popen, gate: Path, until: str | None = None) -> str:
    """main.py's whole output once it and every process it started have ended; the gate opened at once, or once
    a line has `until` in it."""
    seen = ""
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


def assert_same_run(run_dir: Path, reference: Path) -> None:
    for name in ("rounds.csv", "clients.csv", "layers.csv"):
        ours, theirs = (
            pd.read_csv(d / name).drop(columns=TIMING + RETRY_COLUMNS, errors="ignore") for d in (run_dir, reference)
        )
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True, obj=name)


@pytest.mark.slow
def test_a_client_actor_killed_mid_round_is_replaced_its_work_redone_and_the_run_unchanged(
    small_run, imdb_dir, tmp_path
):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    main = gated_main(run_dir, gate, 3, f"data.path={imdb_dir}", *SMALL)  # round 2's clients wait (3 clients)
    os.kill(waiting_actor(gate), signal.SIGKILL)
    output = finished(main, gate)
    assert main.returncode == 0, output[-3000:]
    lines = terminal_warnings(output)
    assert len(lines) == 1 and lines[0].startswith("warning: round 2: the Ray worker (pid "), output[-3000:]
    assert "their work is redone" in lines[0] and only_fedsims_lines(output)
    assert_same_run(run_dir, small_run)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["client_retries"] >= 1
    (entry,) = info["retries"]
    assert entry["round"] == 2 and entry["phase"] == "train" and entry["retries"] == 1
    clients = pd.read_csv(run_dir / "clients.csv")
    redone = clients[clients["retries"] > 0]
    assert sorted(redone["client_id"]) == sorted(entry["clients"]) and set(redone["round"]) == {2}
    assert redone["retry_reason"].str.startswith("the Ray worker (pid ").all()


@pytest.mark.slow
@pytest.mark.parametrize("named", ["raylet/raylet", "DashboardAgent"])
def test_rays_node_killed_mid_round_is_replaced_and_the_run_resumes_by_itself_unchanged(
    named, small_run, imdb_dir, tmp_path
):
    """The raylet killed, or the dashboard agent, whose death takes the raylet with it."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    main = gated_main(run_dir, gate, 3, f"data.path={imdb_dir}", *SMALL)
    ray_process(main, named).kill()
    output = finished(main, gate, until=" resumes the run after round ")
    assert main.returncode == 0, output[-3000:]
    lines = terminal_warnings(output)
    # fedsim notices first and restarts in the same process, or Ray's core worker ends the driver first and
    # main.py's waiting process resumes the run in a new one: the same results either way
    resumed = re.compile(r" in round 2; a new (Ray instance|process) resumes the run after round 1 \(restart 1 of ")
    assert len(lines) == 1 and resumed.search(lines[0]), output
    assert only_fedsims_lines(output), output
    assert_same_run(run_dir, small_run)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and [r["after_round"] for r in info["restarts"]] == [1]


@pytest.mark.slow
def test_the_runs_process_ended_by_a_segfault_mid_round_is_resumed_by_a_new_one_unchanged(
    small_run, imdb_dir, tmp_path
):
    """What Ray's core worker does to its driver when the node dies under it, here without Ray's part in it:
    main.py's waiting process starts a new process that resumes the run from round 1's checkpoint."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    main = gated_main(run_dir, gate, 3, f"data.path={imdb_dir}", *SMALL)
    (driver,) = [p for p in psutil.Process(main.pid).children() if "main.py" in " ".join(p.cmdline())]
    driver.send_signal(signal.SIGSEGV)
    output = finished(main, gate, until=" resumes the run after round ")
    assert main.returncode == 0, output[-3000:]
    (line,) = terminal_warnings(output)
    assert line.startswith(f"warning: the run's process (pid {driver.pid}) ended without recording why (signal ")
    assert line.endswith("; a new process resumes the run after round 1 (restart 1 of runtime.max_restarts=2)")
    assert "in round 2; " in line and "Segmentation fault" in (run_dir / "main.log").read_text()
    assert only_fedsims_lines(output), output
    assert_same_run(run_dir, small_run)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and [r["after_round"] for r in info["restarts"]] == [1]


@pytest.mark.slow
def test_beyond_the_retry_budget_a_dead_workers_clients_are_recorded_failed_with_one_line(imdb_dir, tmp_path):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    main = gated_main(run_dir, gate, 4, f"data.path={imdb_dir}", *QUICK, "runtime.max_retries=0")
    os.kill(waiting_actor(gate), signal.SIGKILL)
    output = finished(main, gate)
    assert main.returncode == 0, output[-3000:]
    (line,) = terminal_warnings(output)
    assert line.startswith("warning: client ") and " failed to train in round 2: the Ray worker (pid " in line
    assert "no retry left (runtime.max_retries=0)" in line
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "degraded" and info["client_failures"] >= 1 and info["client_retries"] == 0
    failed = pd.read_csv(run_dir / "clients.csv").query("status == 'failed'")
    assert len(failed) == info["client_failures"] and set(failed["round"]) == {2}


@pytest.mark.slow
def test_beyond_the_restart_budget_the_run_ends_with_one_line_naming_the_command_that_resumes_it(imdb_dir, tmp_path):
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    main = gated_main(run_dir, gate, 4, f"data.path={imdb_dir}", *QUICK, "runtime.max_restarts=0")
    ray_process(main, "raylet/raylet").kill()
    output = finished(main, gate)
    assert main.returncode == 1, output[-3000:]
    (line,) = terminal_warnings(output)
    assert line.startswith("error: Ray's raylet (pid ") and " died in round 2, after runtime.max_restarts=0 " in line
    assert f"resume with: python main.py resume={run_dir} " in line
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed" and info["rounds_completed"] == 1  # resumable (tests/runs/test_main_cli.py)


@pytest.mark.slow
def test_a_supernode_killed_mid_round_is_started_again_and_gets_its_message_again(small_run, imdb_dir, tmp_path):
    """runtime=deployment: the local federation starts the dead SuperNode again and the server sends it its
    client's message again once the SuperLink counts it back."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    main = gated_main(run_dir, gate, 3, "runtime=deployment", f"data.path={imdb_dir}", *SMALL)
    supernode = json.loads((run_dir / "logs" / "processes.json").read_text())["supernode_0"]
    os.killpg(supernode, signal.SIGKILL)
    output = finished(main, gate)
    assert main.returncode == 0, output[-3000:]
    (line,) = terminal_warnings(output)
    assert line.startswith(f"warning: supernode_0 (pid {supernode}) died; started again (restart 1 of ")
    assert_same_run(run_dir, small_run)
    clients = pd.read_csv(run_dir / "clients.csv")
    assert clients.loc[clients["retries"] > 0, ["round", "client_id"]].values.tolist() == [[2, 0]]


@pytest.mark.slow
def test_a_run_whose_process_ends_in_native_code_is_resumed_by_a_new_one_then_recorded_failed_past_the_budget(
    imdb_dir, tmp_path
):
    """The driver ends with no Python on the way out (os._exit as it builds its model, after run.json says
    `running`, every time): main.py's own process, which waited for it, starts one that resumes the run
    (`runtime.max_restarts=1`), then records how the second ended, each in one line."""
    run_dir = tmp_path / "run"
    done = run_main(
        run_dir,
        f"data.path={imdb_dir}",
        *QUICK,
        "runtime.max_restarts=1",
        "model.net._target_=helpers.gates.bow_then_native_exit",
        env=gated_env(tmp_path / "gate"),
    )
    info = json.loads((run_dir / "run.json").read_text())
    assert done.returncode == 1 and info["status"] == "failed" and info["error_type"] == "ProcessLost"
    restarted, failed = done.stderr.splitlines()
    (restart,) = info["restarts"]
    assert restarted.startswith("warning: the run's process (pid ") and restart["after_round"] == -1
    assert restarted.endswith("; a new process starts it again (restart 1 of runtime.max_restarts=1)")
    assert restart["why"] in restarted and len(info["resumed"]) == 1
    assert failed == f"error: {info['error']}" and f"(pid {info['pid']})" in info["error"]
    assert "(exit code 1)" in info["error"] and ", after runtime.max_restarts=1 restarts; " in info["error"]
    assert info["error"].endswith(f"resume with: python main.py resume={run_dir}")

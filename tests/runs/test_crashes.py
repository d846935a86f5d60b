"""A crashed worker costs time, not results: a client actor killed mid-round is replaced and its work redone,
a Ray node killed mid-round is replaced and the run resumes by itself, each with one line on the terminal, and
after kill -9 of main.py itself `resume=` gives the same run; beyond their budgets, one line says what was
lost. The kills land while clients wait at a gate (tests/helpers/gates.py), so where they land is known without
timing."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pandas as pd
import psutil
import pytest
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from helpers.configs import QUICK, RETRY_COLUMNS, SMALL, TIMING
from helpers.gates import gated_env
from helpers.runs import (
    assert_group_ends,
    finished,
    gated_main,
    main_py,
    next_raylet_at_gate,
    only_fedsims_lines,
    ray_process,
    read_until,
    run_main,
    terminal_warnings,
    waiting_actor,
)

from fedsim.messages.carried import answers, carry, pack
from fedsim.messages.retries import RETRIES, Retried, mark_retried, take_retries
from fedsim.outputs.retried_work import Retries
from fedsim.results.loading import load
from fedsim.runtimes.recovery import crash_line
from fedsim.server.record import Redone, RoundRecord


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
def test_rays_node_killed_mid_round_twice_is_replaced_each_time_and_the_run_resumes_by_itself_unchanged(
    small_run, imdb_dir, tmp_path
):
    """The dashboard agent killed, whose death takes the raylet with it; then, in the Ray instance that replaced
    it, the raylet itself. Each kill lands while round 2's clients wait at the gate."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    main = gated_main(run_dir, gate, 3, f"data.path={imdb_dir}", *SMALL)
    raylet = ray_process(main, "raylet/raylet")
    ray_process(main, "DashboardAgent").kill()
    seen = read_until(main, " resumes the run after round ")
    next_raylet_at_gate(gate, raylet).kill()  # once the new instance's clients wait at the gate in turn
    output = finished(main, gate, until=" resumes the run after round ", seen=seen)
    assert main.returncode == 0, output[-3000:]
    lines = terminal_warnings(output)
    # fedsim notices first and restarts in the same process, or Ray's core worker ends the driver first and
    # main.py's waiting process resumes the run in a new one: the same results either way (each counts its own)
    resumed = re.compile(r" in round 2; a new (Ray instance|process) resumes the run after round 1 \(restart [12] of ")
    assert len(lines) == 2 and all(resumed.search(line) for line in lines), output
    assert only_fedsims_lines(output), output
    assert_same_run(run_dir, small_run)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and [r["after_round"] for r in info["restarts"]] == [1, 1]


@pytest.mark.slow
def test_the_runs_process_ended_by_a_segfault_is_resumed_by_a_new_one_and_after_kill_9_resume_gives_the_same_run(
    small_run, imdb_dir, tmp_path
):
    """First what Ray's core worker does to its driver when the node dies under it, here without Ray's part in it:
    main.py's waiting process starts a new process that resumes the run from round 1's checkpoint. Then, while
    that process's clients train round 2 again, kill -9 of main.py (a crash, an OOM kill): the run is reported
    dead, and `resume=` gives the uninterrupted run's numbers (small_run; FedAdam's state:
    tests/run/test_server_app.py)."""
    run_dir, gate = tmp_path / "run", tmp_path / "gate"
    main = gated_main(run_dir, gate, 3, f"data.path={imdb_dir}", *SMALL)
    raylet = ray_process(main, "raylet/raylet")
    (driver,) = [p for p in psutil.Process(main.pid).children() if "main.py" in " ".join(p.cmdline())]
    driver.send_signal(signal.SIGSEGV)
    output = read_until(main, " resumes the run after round ")
    next_raylet_at_gate(gate, raylet)  # the new process's clients wait at the gate in turn
    try:
        main.kill()  # main.py's own process alone; the run's process dies with it
        main.wait()
    finally:
        os.killpg(main.pid, signal.SIGKILL)  # then what it had started (Ray), by the test's own hand
    assert_group_ends(main)
    (line,) = terminal_warnings(output)
    assert line.startswith(f"warning: the run's process (pid {driver.pid}) ended without recording why (signal ")
    assert line.endswith("; a new process resumes the run after round 1 (restart 1 of runtime.max_restarts=2)")
    assert "in round 2; " in line and "Segmentation fault" in (run_dir / "main.log").read_text()
    assert only_fedsims_lines(output), output
    assert load(run_dir).info["status"] == "dead"

    (gate / "open").touch()
    resumed = main_py(f"resume={run_dir}", env=gated_env(gate))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(run_dir, small_run)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and [r["after_round"] for r in info["restarts"]] == [1]
    assert [r["from_round"] for r in info["resumed"]] == [1, 1]  # the new process's, then resume='s


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

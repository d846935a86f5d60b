"""A collection's shared runners (fedsim.cli.warm_runner, fedsim.collections.launchers.SharedRunners,
fedsim.runtimes.warm): each run bitwise the run made alone, a failed run recorded and the next one clean,
kill -9 of a runner, then of the collector, then the same command giving each run once."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pandas as pd
import psutil
import pytest
from helpers.configs import TIMING
from helpers.runs import collect, start_main

from fedsim.system.processes import group_alive
from fedsim.system.waits import wait_for

CSVS = ("rounds.csv", "clients.csv", "layers.csv")


def tiny(imdb_dir: Path, rounds: int = 2) -> list[str]:
    return [f"data.path={imdb_dir}", f"num_rounds={rounds}", "data.train_size=400", "data.test_size=200"]


def assert_same_results(a: Path, b: Path) -> None:
    """Two runs' CSVs equal to the bit, timings, memory and Ray's node ids aside."""
    for name in CSVS:
        x, y = pd.read_csv(a / name), pd.read_csv(b / name)
        drop = [c for c in TIMING if c in x.columns]
        pd.testing.assert_frame_equal(x.drop(columns=drop), y.drop(columns=drop), check_exact=True, obj=name)


def pid_of(run_dir: Path) -> int:
    return json.loads((run_dir / "run.json").read_text())["pid"]


@pytest.mark.slow
def test_a_collections_runs_equal_the_same_runs_made_alone_and_a_failed_run_leaves_the_next_clean(imdb_dir, tmp_path):
    """Seed 0: three clients with label flipping, then without attack in the same runner (its poisoned labels,
    attack and model must not reach the next run), then 300 clients, which fail once the data is read, ending
    that runner; seed 1 then starts in a fresh runner."""
    sweeps = ["--sweep", "num_clients=3,300", "--sweep", "attack=label_flip,none"]
    output, _ = collect(
        tmp_path, "--seeds", "0", "1", "--name", "c", *sweeps, "--", *tiny(imdb_dir, rounds=1)
    ).communicate(timeout=900)
    runs = pd.read_csv(tmp_path / "c" / "runs.csv")
    assert runs.status.tolist() == ["completed", "completed", "failed", "failed"] * 2, output[-3000:]
    assert runs.error[runs.status == "failed"].str.startswith("data.val_fraction: client ").all()
    run_dir = {
        (row.seed, row.overrides.split("attack=")[1]): tmp_path / "c" / "runs" / f"run_{row.run_id:04d}"
        for row in runs[runs.status == "completed"].itertuples()
    }
    assert pid_of(run_dir[0, "label_flip"]) == pid_of(run_dir[0, "none"])  # one runner made both
    assert pid_of(run_dir[1, "label_flip"]) != pid_of(run_dir[0, "none"])  # a fresh one after the failed runs
    # next in its runner, and first in the runner after a failure; each made alone by a main.py of its own (and
    # its own Ray), the two at once
    alone = {key: tmp_path / "alone" / f"{key[0]}-{key[1]}" for key in ((0, "none"), (1, "label_flip"))}
    started = {
        (seed, attack): start_main(d, *tiny(imdb_dir, rounds=1), "num_clients=3", f"attack={attack}", f"seed={seed}")
        for (seed, attack), d in alone.items()
    }
    try:
        printed = {key: process.communicate(timeout=600)[0] for key, process in started.items()}
    finally:
        for process in started.values():
            if group_alive(process.pid):
                os.killpg(process.pid, signal.SIGKILL)
    for key, process in started.items():
        assert process.returncode == 0, printed[key][-2000:]
        assert_same_results(run_dir[key], alone[key])
    info = json.loads((run_dir[0, "label_flip"] / "run.json").read_text())
    assert (
        info["malicious_clients"] and not json.loads((run_dir[0, "none"] / "run.json").read_text())["malicious_clients"]
    )


def runner_of(collector: psutil.Process) -> psutil.Process | None:
    for child in collector.children():
        if "fedsim.cli.warm_runner" in " ".join(child.cmdline()):
            return child
    return None


def rounds_done(run_dir: Path) -> int:
    rounds = run_dir / "rounds.csv"
    return len(rounds.read_text().splitlines()) - 2 if rounds.exists() else -1  # the header and round 0


@pytest.mark.slow
def test_kill_9_of_a_runner_then_of_the_collector_then_the_same_command_gives_each_run_once(imdb_dir, tmp_path):
    """kill -9 of the runner making run 0: that run is recorded failed, its processes end, and run 1 starts in a
    fresh runner. kill -9 of the collector while run 1 trains: run 1 stops with it. The same command then resumes
    both from their checkpoints, each once, run 0 equal to the same run made alone."""
    args = ["--runs", "2", "--name", "k", "--", *tiny(imdb_dir, rounds=6), "num_clients=2"]
    runs = tmp_path / "k" / "runs"
    proc = collect(tmp_path, *args)
    try:
        wait_for(lambda: rounds_done(runs / "run_0000") >= 2, timeout_s=600, what="run 0's round 2", key="-")
        runner = runner_of(psutil.Process(proc.pid))
        assert runner is not None
        below = runner.children(recursive=True)  # Ray's processes and the client actors
        assert below
        os.kill(runner.pid, signal.SIGKILL)
        wait_for(lambda: rounds_done(runs / "run_0001") >= 2, timeout_s=600, what="run 1's round 2", key="-")
        _, left = psutil.wait_procs(below, timeout=30)
        assert not left, f"the killed runner's processes outlived it: {[p.pid for p in left]}"
        assert pd.read_csv(tmp_path / "k" / "runs.csv").set_index("run_id").status[0] == "failed"
        fresh = runner_of(psutil.Process(proc.pid))
        assert fresh is not None and fresh.pid != runner.pid
        making_run_1 = [fresh, *fresh.children(recursive=True)]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    _, left = psutil.wait_procs(making_run_1, timeout=30)
    assert not left, f"run 1's processes outlived the killed collector: {[p.pid for p in left]}"

    alone = tmp_path / "alone"  # run 0 made by a main.py of its own, while the same command resumes both runs
    single = start_main(alone, *args[args.index("--") + 1 :], "seed=0")
    try:
        output, _ = collect(tmp_path, *args).communicate(timeout=600)
        printed, _ = single.communicate(timeout=600)
    finally:
        if group_alive(single.pid):
            os.killpg(single.pid, signal.SIGKILL)
    assert "0 already completed, 2 to run" in output, output[-2000:]
    ledger = pd.read_csv(tmp_path / "k" / "runs.csv")
    assert ledger.run_id.tolist() == [0, 1] and (ledger.status == "completed").all()
    for run in ("run_0000", "run_0001"):
        assert json.loads((runs / run / "run.json").read_text())["resumed"], f"{run} went on from its checkpoint"
    table = pd.read_csv(tmp_path / "k" / "rounds.csv")
    assert sorted(table.run_id.unique()) == [0, 1] and not table.duplicated(["run_id", "round"]).any()
    assert (table.groupby("run_id")["round"].max() == 6).all()
    assert single.returncode == 0, printed[-2000:]
    assert_same_results(runs / "run_0000", alone)

"""What is refused before anything starts, in-process: overrides outside the config tree, missing group options,
settings Flower would wait on forever, a run directory another run owns or holds; and the bounded waits and the
console scripts every started process finds."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Message, MessageType, RecordDict
from helpers.configs import make_cfg
from helpers.patching import binds_locally, calls_to, dotted_name, function_tree
from helpers.runs import ROOT

from fedsim.cli.command import check_command_line
from fedsim.collections.plan import CollectionError, check_plan, plan
from fedsim.run.directory import LOCK, claim, in_use, release
from fedsim.run.experiment import build
from fedsim.system.errors import ConfigError
from fedsim.system.processes import child_env, command, scripts_dir
from fedsim.system.waits import TimedOut, wait_for


@pytest.mark.parametrize(
    "argv, says",
    [
        (["+foo=1"], "foo: not a fedsim key; allowed: a key of conf/"),
        (["num_client=5"], "num_client: not a fedsim key; allowed: num_clients"),
        (["+num_client=5"], "num_client: not a fedsim key; allowed: num_clients"),
        (["+num_clients=5"], "num_clients: is a fedsim key already; allowed: num_clients=VALUE, without '+'"),
        (
            ["strategy=nosuch"],
            "strategy: no option 'nosuch'; allowed: bulyan, centered_clipping, fedadagrad, fedadam, ",
        ),
        (["-m", "strategy=fedavg,nosuch"], "strategy: no option 'nosuch'; allowed: "),
        (
            ["strategy.proximal_mu=0.1"],
            "strategy.proximal_mu: not a key of the chosen strategy; allowed: strategy=fedprox",
        ),
        (["+strategy.eta=0.1"], "strategy.eta: not a key of the chosen strategy; allowed: strategy=fedadagrad or "),
        (["+strategy.foo=0.1"], "strategy.foo: not a fedsim key; allowed: "),
        (
            ["-m", "strategy=fedavg,fedprox", "strategy.proximal_mu=0.1"],
            "strategy.proximal_mu: not a key of the chosen",
        ),
    ],
)
def test_overrides_outside_the_config_tree_are_one_line(argv, says):
    with pytest.raises(ConfigError) as refused:
        check_command_line(argv)
    assert str(refused.value).startswith(says) and "\n" not in str(refused.value), str(refused.value)


@pytest.mark.parametrize(
    "argv",
    [
        ["num_clients=4", "strategy=fedprox", "strategy.proximal_mu=0.1"],
        ["strategy=fedadam", "strategy.eta=0.01"],
        ["archive.layers=[embedding.*,fc.*]"],
        ["++tracking.tags.run_id=3", "tracking.group='a b'"],  # an open mapping: the user's own tag names
        ["+model.optimizer.weight_decay=0.01"],  # a parameter of the object the node builds (torch.optim.Adam)
        ["hydra.run.dir=/tmp/x", "hydra.job.chdir=false"],  # Hydra's own keys are Hydra's to check
        ["-m", "seed=0,1", "strategy=fedavg,fedprox"],
        ["--help"],
    ],
)
def test_overrides_main_py_runs_pass(argv):
    check_command_line(argv)


def test_settings_flower_would_wait_on_forever_are_refused():
    for key in ("min_train_nodes", "min_evaluate_nodes", "min_available_nodes"):
        with pytest.raises(
            ConfigError,
            match=rf"^strategy.{key}: 5, but the federation has num_clients=3 .*"
            r"wait forever.*; allowed: at most 3$",
        ):
            build(make_cfg("num_clients=3", f"strategy.{key}=5"))
    build(make_cfg("num_clients=3", "strategy.fraction_evaluate=0", "strategy.min_evaluate_nodes=5"))  # not used


def test_a_collection_refuses_what_main_py_would_before_it_exists():
    with pytest.raises(CollectionError, match=r"^nosuch.key: not a fedsim key"):
        check_plan(plan(["num_rounds=1"], ["nosuch.key=1,2"], [0]))
    with pytest.raises(CollectionError, match=r"^num_clients: got 0; allowed: an integer >= 1 \(in num_clients=0"):
        check_plan(plan([], ["num_clients=0,2"], [0, 1]))
    runs = plan([], ["archive.layers=[embedding.*],[fc.*]"], [0])  # list values: Hydra's override parser
    assert [r.overrides for r in runs] == [("archive.layers=[embedding.*]",), ("archive.layers=[fc.*]",)]
    check_plan(runs)


def hold(run_dir: Path) -> subprocess.Popen:
    """Another process that owns `run_dir` until it is killed."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fedsim.run.directory import claim; "
            f"claim({str(run_dir)!r}); print('held', flush=True); time.sleep(300)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def finished_run(run_dir: Path, status: str = "completed", checkpoint: bool = True) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "run.json").write_text(json.dumps({"status": status, "rounds_completed": 3}))
    (run_dir / "config.yaml").write_text("num_rounds: 3\n")
    (run_dir / "rounds.csv").write_text("round\n0\n")
    if checkpoint:
        (run_dir / "checkpoint.safetensors").write_bytes(b"")
    return run_dir


def test_a_directory_a_live_run_owns_is_refused_naming_its_pid(tmp_path):
    holder = hold(tmp_path / "run")
    try:
        assert in_use(tmp_path / "run") == f"pid {holder.pid}"
        with pytest.raises(
            ConfigError,
            match=rf"^hydra.run.dir: .*run is in use by a live run \(pid {holder.pid}\); "
            "allowed: another directory",
        ):
            claim(tmp_path / "run", overwrite=True)
    finally:
        holder.kill()
        holder.wait()
    assert in_use(tmp_path / "run") is None  # the kernel dropped the dead owner's lock
    claim(tmp_path / "run")
    release(tmp_path / "run")


@pytest.mark.parametrize(
    "status, continues", [("completed", "resume={run} num_rounds=MORE"), ("interrupted", "resume={run}")]
)
def test_a_directory_holding_a_stopped_or_finished_run_is_refused_unless_overwritten(tmp_path, status, continues):
    run = finished_run(tmp_path / "run", status)
    with pytest.raises(ConfigError) as refused:
        claim(run)
    allowed = f"another directory, overwrite=true to replace it, {continues.format(run=run)} to continue it"
    assert str(refused.value) == f"hydra.run.dir: {run} holds a run ({status}, 3 rounds); allowed: {allowed}"
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.safetensors",
        "config.yaml",
        "rounds.csv",
        "run.json",
    ]  # nothing touched
    claim(run, resume=True)  # continuing it is its own run
    release(run)
    claim(run, overwrite=True, keep=("main.log",))
    assert [p.name for p in run.iterdir()] == [LOCK]
    release(run)


def test_a_run_refused_for_bad_input_leaves_nothing_that_blocks_the_next(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"status": "failed", "error": "num_clients: got 0"}))  # no config.yaml
    claim(run)
    release(run)


def test_a_collection_leaves_a_run_directory_a_live_run_owns_alone(tmp_path, imdb_dir):
    from fedsim.collections.ledger import Collection
    from fedsim.collections.scheduler import run_collection

    collection = Collection(tmp_path / "c")
    holder = hold(collection.run_dir(0))
    try:
        lines: list[str] = []
        failed = run_collection(
            collection, ROOT / "main.py", plan([f"data.path={imdb_dir}"], [], [0]), echo=lines.append
        )
        assert failed == 0 and any(line.startswith("[busy] run 0") and f"pid {holder.pid}" in line for line in lines)
        assert [p.name for p in collection.run_dir(0).iterdir()] == [LOCK]  # untouched
    finally:
        holder.kill()
        holder.wait()
        collection.close()


def test_a_wait_ends_at_its_deadline_naming_what_it_waited_for_and_its_key():
    with pytest.raises(
        TimedOut,
        match=r"^gave up waiting for 3 nodes after 0.2 s \(runtime.startup_timeout_s sets "
        r"how long\): 1 joined$",
    ):
        wait_for(
            lambda: False,
            timeout_s=0.2,
            what="3 nodes",
            key="runtime.startup_timeout_s",
            poll_s=0.05,
            hint=lambda: "1 joined",
        )
    ticks = iter(range(10))
    assert wait_for(lambda: next(ticks) == 3 and "ready", timeout_s=60, what="x", key="k", poll_s=0) == "ready"


def test_started_processes_find_this_interpreters_console_scripts_whatever_path_says(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    env = child_env(FOO="1")
    assert env["PATH"].split(os.pathsep) == [scripts_dir(), "/usr/bin", "/bin"] and env["FOO"] == "1"
    assert command("flower-superexec") == str(Path(scripts_dir()) / "flower-superexec")
    with pytest.raises(FileNotFoundError, match="^no-such-tool: no such command beside "):
        command("no-such-tool")
    done = subprocess.run(["flower-superexec", "--help"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 0  # found by name, as Flower's SuperLink starts it


def test_a_round_without_replies_ends_at_the_reply_timeout(monkeypatch):
    """No reply within runtime.reply_timeout_s: the clients are recorded failed, naming the key, not waited for."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    import fedsim.server.participation
    from fedsim.config.settings import ServerSettings
    from fedsim.server.cohort import Cohort
    from fedsim.server.faults import Faults
    from fedsim.server.participation import Participants

    class Mute:  # a grid whose nodes stay online and never answer
        def push_messages(self, messages):
            return [f"m{i}" for i, _ in enumerate(messages)]

        def pull_messages(self, ids):
            return []

        def get_node_ids(self):
            return [11, 22]

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    monkeypatch.setattr(fedsim.server.participation, "POLL_S", 0.01)
    server = ServerSettings.of(make_cfg("runtime.reply_timeout_s=0.3", "runtime.startup_timeout_s=7"))
    assert (server.startup_timeout_s, server.reply_timeout_s) == (7.0, 0.3)
    messages = [Message(RecordDict(), dst_node_id=0, message_type=MessageType.TRAIN) for _ in range(2)]
    cohort = Cohort(Mute(), Participants({0: 11, 1: 22}, seed=0), Faults(), seed=0, local_epochs=1, timeout_s=0.3)
    trained = cohort.train(1, messages)
    assert trained.replies == {} and trained.updates == []
    assert [(f.client_id, f.status, f.error) for f in trained.failures] == [
        (c, "failed", "no reply within 0.3 s (runtime.reply_timeout_s)") for c in (0, 1)
    ]


def test_main_pys_command_line_is_read_with_the_parser_hydra_main_uses():
    """Read, not patched: `hydra._internal.utils.get_args_parser` (fedsim.cli.command.check_command_line). Guards
    Hydra's `hydra.main.main`, read from the installed source: the function `@hydra.main` wraps around main.py
    parses the command line with that very parser, so fedsim checks the words Hydra will run; and the parser
    still gives every attribute check_command_line reads."""
    from hydra._internal.utils import get_args_parser

    from fedsim.cli.command import check_command_line

    hydra_main = sys.modules["hydra.main"]  # the module: `hydra.main` is also the decorator
    assert hydra_main.get_args_parser is get_args_parser
    assert calls_to(hydra_main.main, "get_args_parser") and not binds_locally(hydra_main.main, "get_args_parser")
    read = {
        n.attr
        for n in ast.walk(function_tree(check_command_line))
        if isinstance(n, ast.Attribute) and dotted_name(n.value) == "args"
    }
    parsed = vars(get_args_parser().parse_args(["num_clients=4", "+x=1"]))
    assert read and read <= set(parsed), read - set(parsed)
    assert parsed["overrides"] == ["num_clients=4", "+x=1"]

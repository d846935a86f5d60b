"""fedsim's SuperExec: each ClientApp and ServerApp a fork of one warm process, with the arguments Flower gave."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.app import Context, RecordDict
from flwr.cli.build import build_fab_from_disk
from flwr.cli.config_utils import load
from flwr.cli.install import install_from_fab
from helpers.patching import (
    Stop,
    binds_locally,
    calls_to,
    kept_as_is,
    recording,
    supernode_loop,
)
from helpers.runs import ROOT

from fedsim.runtimes import superexec
from fedsim.runtimes.federation import staged_app
from fedsim.runtimes.superexec import (
    CLIENT_APP,
    ENTRIES,
    IDLE_S,
    MODULE,
    ForkServer,
    install_once,
    installed_once,
    runtime_api_address,
    short_pulls,
    superexec_argv,
)
from fedsim.runtimes.supernode import LOCAL_S, ShortSleeps
from fedsim.system.processes import child_env
from fedsim.system.waits import wait_for

SERVE_RECORD = (
    "import sys; from fedsim.runtimes.superexec import serve; from helpers.forks import record; "
    "serve({'record': record}, sys.stdin)"
)


@pytest.mark.slow
def test_each_request_runs_in_a_fork_of_the_server_which_ends_with_its_input(tmp_path):
    env = {**os.environ, "FORK_RECORDS": str(tmp_path), "PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE_RECORD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        for argv, quiet in (
            (["record", "0", "first"], False),
            (["record", "3", "second"], False),
            (["record", "0", "third"], True),
        ):
            server.stdin.write(json.dumps({"argv": argv, "quiet": quiet}) + "\n")
        server.stdin.flush()
        wait_for(lambda: len(list(tmp_path.glob("*.json"))) == 3, timeout_s=60, what="three forks", key="the test")
        assert server.poll() is None  # a child's exit, with any code, is not the server's
        server.stdin.close()
        assert server.wait(timeout=30) == 0
        printed = server.stdout.read()
    finally:
        server.kill()
    records = sorted((json.loads(p.read_text()) for p in tmp_path.glob("*.json")), key=lambda r: r["argv"][2])
    assert [r["argv"] for r in records] == [
        ["record", "0", "first"],
        ["record", "3", "second"],
        ["record", "0", "third"],
    ]
    assert [r["ppid"] for r in records] == [server.pid] * 3
    assert len({r["pid"] for r in records}) == 3
    assert sorted(printed.splitlines()) == ["recorded first", "recorded second"]  # the quiet one printed nowhere


@pytest.mark.slow
def test_flowers_apps_start_as_forks_with_their_arguments_and_cold_once_the_server_is_gone(capfd):
    server = ForkServer()
    try:
        assert server.popen(["flwr-clientapp", "--help"]) is None  # forked: nothing for Flower to keep
        seen = []

        def printed_help() -> bool:
            seen.append(capfd.readouterr().out)
            return "usage: flwr-clientapp" in "".join(seen)

        wait_for(printed_help, timeout_s=60, what="the fork's help", key="the test")
        server.process.kill()
        server.process.wait()
        cold = server.popen(["flwr-serverapp", "--help"], stdout=subprocess.PIPE, text=True, env=child_env())
        assert "usage: flwr-serverapp" in cold.communicate(timeout=60)[0]
        assert "starts cold" in capfd.readouterr().err
    finally:
        server.process.kill()
        server.process.wait()
    assert set(ENTRIES) == {"flwr-clientapp", "flwr-serverapp"}


@pytest.mark.slow
def test_the_superexec_waits_for_its_runtime_api_then_runs_flowers_and_leaves_if_its_parent_ends_first():
    """The federation starts the SuperExec beside a SuperNode that opens its Runtime API a while later: it waits
    (every IDLE_S, not Flower's 1 s, 2 s, ... backoff), then runs Flower's flower-superexec with its arguments;
    a SuperExec whose SuperNode ended before that leaves without starting Flower's."""
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        port = listening.getsockname()[1]
        argv = superexec_argv(runtime_api_address("127.0.0.1", port), os.getpid())
        waiting = subprocess.Popen([*argv, "--help"], stdout=subprocess.PIPE, text=True, env=child_env())
        time.sleep(10 * IDLE_S)
        assert waiting.poll() is None  # nothing listens yet
        listening.listen()
        assert "usage: flower-superexec" in waiting.communicate(timeout=60)[0]
    parent = subprocess.Popen([sys.executable, "-c", "pass"])
    parent.wait()
    orphan = subprocess.run(
        [*superexec_argv(runtime_api_address("0.0.0.0", port), parent.pid), "--help"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
    )
    assert orphan.returncode == 0 and "flower-superexec" not in orphan.stdout


def test_a_superexec_reaches_a_bind_all_host_on_the_loopback():
    assert runtime_api_address("0.0.0.0", 9) == "127.0.0.1:9"
    assert runtime_api_address("::", 9) == "[::1]:9"
    assert runtime_api_address("10.0.0.7", 9) == "10.0.0.7:9"


def test_a_fab_is_installed_once_where_flower_installs_it_and_then_found_there(tmp_path, monkeypatch):
    """The first app process installs the FAB with Flower's own function (into a private folder, renamed into
    place); later ones find the folder Flower would have named and install nothing."""
    fab = build_fab_from_disk(staged_app(ROOT, tmp_path / "app"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "home"))
    calls = []

    def flowers(*args):
        calls.append(args)
        return install_from_fab(*args)

    install = installed_once(flowers)
    first = install(fab, None, True)
    assert install(fab, None, True) == first and len(calls) == 1
    own = install_from_fab(fab, tmp_path / "flower", True)  # Flower's install, elsewhere
    assert first.name == own.name and first.parent == tmp_path / "home" / own.parent.name
    assert sorted(p.relative_to(first) for p in first.rglob("*")) == sorted(p.relative_to(own) for p in own.rglob("*"))
    assert [p.name for p in first.parent.iterdir()] == [first.name]  # no private folder left behind
    other = tmp_path / "elsewhere"
    assert install(fab, other, True) == other / own.parent.name / own.name and len(calls) == 2  # as Flower's


def test_the_fork_server_imports_the_clientapp_the_fab_names():
    components = load(ROOT / "pyproject.toml")["tool"]["flwr"]["app"]["components"]
    assert components["clientapp"].partition(":")[0] == CLIENT_APP


def test_a_supernode_polls_the_superlink_every_idle_s_and_looks_for_its_reply_every_local_s(monkeypatch):
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    for seconds in (3, 0.5, 0.005):
        ShortSleeps.sleep(seconds)
    assert slept == [IDLE_S, LOCAL_S, 0.005]


def test_every_pull_of_a_messages_parts_retries_every_idle_s(monkeypatch):
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal
    from flwr.supernode.runtime import run_clientapp

    pulls = [
        (run_clientapp, "pull_and_inflate_object_from_tree"),
        (http_grid, "pull_objects"),
        (start_client_internal, "pull_objects"),
    ]
    for module, name in pulls:
        monkeypatch.setattr(module, name, getattr(module, name))  # Flower's own again after the test
    short_pulls()
    for module, name in pulls:
        assert getattr(module, name).keywords == {"initial_backoff": IDLE_S, "backoff_cap": IDLE_S}


def _literal(node: ast.AST) -> Any:
    """A call's argument as its value where the source spells a literal, else as its source text."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return ast.unparse(node)


def test_fedsims_superexec_gets_the_arguments_flowers_supernode_and_superlink_give_theirs(monkeypatch):
    """No patch, a reliance: fedsim.runtimes.superexec.superexec_argv gives the SuperExec the federation starts
    beside a SuperNode or the SuperLink the arguments that Flower's `start_client_internal` and `SuperLinkLifespan`
    give `flower-superexec` under `--isolation subprocess` (here run on stand-ins, their Popen recording), after
    fedsim's `python -m fedsim.runtimes.superexec`."""
    from flwr.supernode import start_client_internal as flower

    from fedsim.runtimes.superexec import superexec_argv

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kwargs: started.append(command))
    monkeypatch.setattr(time, "sleep", lambda seconds: _raise(Stop()))
    with pytest.raises(Stop):
        supernode_loop(flower, monkeypatch, flower.ISOLATION_MODE_SUBPROCESS)()
    ours = superexec_argv("127.0.0.1:9094", os.getpid())
    assert ours[:3] == [sys.executable, "-m", MODULE] and started == [["flower-superexec", *ours[3:]]]

    module = importlib.import_module("flwr.superlink.cli.flower_superlink")
    started.clear()
    process = SimpleNamespace(terminate=lambda: None, wait=lambda timeout=None: 0)
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kwargs: started.append(command) or process)
    for name in ("FLWR_INTERNAL_GRPC_CONTROL_API", "FLWR_INTERNAL_GRPC_FLEET_API"):
        monkeypatch.delenv(getattr(module, name), raising=False)  # no gRPC server of Flower's is started
    config = SimpleNamespace(
        isolation=module.ISOLATION_MODE_SUBPROCESS,
        host="127.0.0.1",
        port=9091,
        certificates=(b"ca", b"cert", b"key"),
        ssl_ca_certfile="/certs/ca.crt",
        runtime_dependency_install=False,
        health_server_address=None,
    )
    module.SuperLinkLifespan(config, SimpleNamespace(objectstore_factory=None, state=lambda: None)).startup()
    ours = superexec_argv("127.0.0.1:9091", os.getpid(), Path("/certs/ca.crt"))
    assert started == [["flower-superexec", *ours[3:]]]
    config.isolation = module.ISOLATION_MODE_PROCESS  # as the federation starts it: no SuperExec of its own
    started.clear()
    module.SuperLinkLifespan(config, SimpleNamespace(objectstore_factory=None, state=lambda: None)).startup()
    assert started == []


def _raise(exc: BaseException) -> None:
    raise exc


def test_a_clientapp_pulls_its_message_with_fedsims_backoff(flower_pulls_kept, task_identity, monkeypatch):
    """Patch `run_clientapp.pull_and_inflate_object_from_tree` (fedsim.runtimes.superexec.short_pulls, in the fork
    server every ClientApp process is forked from). Guards Flower's
    `flwr.supernode.runtime.run_clientapp.pull_task_input`: a ClientApp pulls its message with its module's
    `pull_and_inflate_object_from_tree`, which then takes fedsim's backoff."""
    from flwr.common.serde import context_to_proto, fab_to_proto, run_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage
    from flwr.proto.message_pb2 import ObjectTree
    from flwr.proto.runtime_pb2 import PullAppMessagesResponse, PullTaskInputResponse
    from flwr.supercore.fab import Fab
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supercore.run import Run
    from flwr.supernode.runtime import run_clientapp

    pulls = []
    pulled = SimpleNamespace(metadata=SimpleNamespace())
    monkeypatch.setattr(
        run_clientapp,
        "pull_and_inflate_object_from_tree",
        recording(inflatable_utils.pull_and_inflate_object_from_tree, pulls, lambda *a, **k: pulled),
    )
    short_pulls()
    context = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    client = SimpleNamespace(
        PullTaskInput=lambda request: PullTaskInputResponse(
            task_id=3,
            run=run_to_proto(Run.create_empty(1)),
            context=context_to_proto(context),
            fab=fab_to_proto(Fab("h", b"", {})),
        ),
        PullMessages=lambda request: PullAppMessagesResponse(
            messages_list=[ProtoMessage()], message_object_trees=[ObjectTree(object_id="m")]
        ),
        PullObject=None,
        ConfirmMessageReceived=None,
    )
    message, _, run, _ = run_clientapp.pull_task_input(client)
    assert message is pulled and run.run_id == 1
    assert [(p["initial_backoff"], p["backoff_cap"]) for p in pulls] == [(IDLE_S, IDLE_S)]


def test_a_serverapp_pulls_its_replies_with_fedsims_backoff(flower_pulls_kept, monkeypatch):
    """Patch `http_grid.pull_objects` (fedsim.runtimes.superexec.short_pulls, in the fork server every ServerApp
    process is forked from). Guards Flower's `flwr.superlink.grid.http_grid.HttpGrid.pull_messages`: the ServerApp
    pulls a reply's parts with its module's `pull_objects`, which then takes fedsim's backoff."""
    from flwr.common.constant import ErrorCode
    from flwr.proto.message_pb2 import Message as ProtoMessage
    from flwr.proto.message_pb2 import Metadata, ObjectTree
    from flwr.proto.runtime_pb2 import PullAppMessagesResponse
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supercore.run import Run
    from flwr.superlink.grid import http_grid

    pulls = []

    def unavailable(*args, **kwargs):
        raise inflatable_utils.ObjectPullError("m", "not pushed yet")

    monkeypatch.setattr(http_grid, "pull_objects", recording(inflatable_utils.pull_objects, pulls, unavailable))
    short_pulls()
    client = SimpleNamespace(
        PullMessages=lambda request: PullAppMessagesResponse(
            messages_list=[ProtoMessage(metadata=Metadata(message_id="m", reply_to_message_id="q"))],
            message_object_trees=[ObjectTree(object_id="m")],
        ),
        PullObject=None,
    )
    monkeypatch.setattr(http_grid, "RuntimeHttpClient", SimpleNamespace(from_server_address=lambda **kwargs: client))
    grid = http_grid.HttpGrid(insecure=True, token="t")
    grid.set_run(Run.create_empty(1))
    (reply,) = grid.pull_messages(["m"])
    assert reply.has_error() and reply.error.code == ErrorCode.MESSAGE_UNAVAILABLE
    assert [(p["object_ids"], p["initial_backoff"], p["backoff_cap"]) for p in pulls] == [(["m"], IDLE_S, IDLE_S)]


APP_MODULES = {  # the modules install_once patches, and the function of each that installs the FAB
    "flwr.supernode.runtime.run_clientapp": "run_clientapp",
    "flwr.superlink.runtime.run_serverapp": "run_serverapp",
}


@pytest.mark.parametrize("module_name, function_name", APP_MODULES.items())
def test_each_app_installs_its_fab_through_the_name_install_once_wraps(module_name, function_name, monkeypatch):
    """Patch `install_from_fab` in run_clientapp and run_serverapp (fedsim.runtimes.superexec.install_once, in the
    fork server). Guards Flower's `run_clientapp.run_clientapp` and `run_serverapp.run_serverapp`, read from the
    installed source (the whole app process is not cheap to run): each calls its module's `install_from_fab` once,
    as `install_from_fab(fab.content, skip_prompt=True)`, the one form fedsim's `installed_once` serves from the
    installed folder (any other form goes to Flower's own function)."""
    from flwr.cli.install import install_from_fab

    module = importlib.import_module(module_name)  # as install_once finds it
    function = getattr(module, function_name)
    assert inspect.isfunction(function) and function.__module__ == module_name
    assert module.install_from_fab is install_from_fab  # a global of the module, Flower's own before the patch
    assert not binds_locally(function, "install_from_fab")
    (call,) = calls_to(function, "install_from_fab")
    given = inspect.signature(install_from_fab).bind(
        *map(_literal, call.args), **{k.arg: _literal(k.value) for k in call.keywords}
    )
    assert given.arguments.get("install_dir") is None and given.arguments.get("skip_prompt") is True, ast.unparse(call)
    for name in APP_MODULES:  # install_once patches both
        kept_as_is(monkeypatch, importlib.import_module(name), "install_from_fab")
    install_once()
    assert module.install_from_fab.__qualname__.startswith("installed_once.")


def test_the_superexec_starts_each_app_through_fedsims_fork_server(monkeypatch):
    """Patch `subprocess_executor.subprocess` (fedsim.runtimes.superexec.main). Guards Flower's
    `flwr.supercore.superexec.executor.subprocess_executor.SubprocessExecutor.launch`, the executor
    flower-superexec uses by default: it starts each app with its module's `subprocess.Popen`, as a command whose
    first word is a console script fedsim's fork server runs (ENTRIES), with the ServerApp's output sent to
    `subprocess.DEVNULL` (the fork server's `quiet`)."""
    import flwr.supercore.cli as supercore_cli
    from flwr.supercore.constant import ExecutorType, TaskType
    from flwr.supercore.superexec.executor import subprocess_executor
    from flwr.supercore.superexec.executor.factory import get_executor
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    kept_as_is(monkeypatch, subprocess_executor, "subprocess")
    launched, cold = [], []
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kwargs: cold.append(args))  # no app process starts

    class ForkServer:  # the fork server's process is not started: its popen records what it would fork
        def popen(self, args: list[str], **kwargs: Any) -> None:
            launched.append((args, kwargs))

    def flower_superexec() -> None:
        executor = get_executor(ExecutorType.SUBPROCESS)
        for task_type, quiet in ((TaskType.CLIENT_APP, False), (TaskType.SERVER_APP, True)):
            spec = ExecutionSpec(
                task_type=task_type,
                runtime_api_address="127.0.0.1:9091",
                token="t",
                insecure=True,
                root_certificates_path=None,
                runtime_dependency_install=False,
                parent_pid=os.getpid(),
                suppress_output=quiet,
                task_id=1,
            )
            executor.launch(spec)

    monkeypatch.setattr(superexec, "ForkServer", ForkServer)
    monkeypatch.setattr(supercore_cli, "flower_superexec", flower_superexec)
    monkeypatch.setattr(sys, "argv", ["fedsim-test"])
    superexec.main()
    assert not cold and [args[0] for args, _ in launched] == ["flwr-clientapp", "flwr-serverapp"]
    assert all(args[0] in ENTRIES for args, _ in launched)
    assert "stdout" not in launched[0][1] and launched[1][1]["stdout"] == subprocess.DEVNULL
    cli = importlib.import_module("flwr.supercore.cli.flower_superexec")
    assert cli._parse_args().parse_args(["--runtime-api-address", "127.0.0.1:9091"]).executor == ExecutorType.SUBPROCESS

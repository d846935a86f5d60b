"""Each patch of a Flower or Ray internal (docs/reference/patches.md) against the code that must still call the
patched name: the test runs that code of the installed package with fedsim's patch in place, with cheap stand-ins
for what it talks to, and sees fedsim's replacement run. Where that code cannot run cheaply, the test reads the
installed source of the one function that must make the call. The internal names of Flower, Ray, Hydra and
OmegaConf that fedsim only reads are checked for the meaning fedsim takes them in.

A patch's test fails when an upgraded package stops calling the patched name on the path the patch serves; the
tables in docs/reference/patches.md name the test of each row. No test here starts Ray or a Flower process.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from omegaconf import OmegaConf

from fedsim.messages.records import to_record
from fedsim.runtimes import superexec, supernode
from fedsim.runtimes.superexec import ENTRIES, IDLE_S, MODULE, install_once, short_pulls
from fedsim.runtimes.supernode import LOCAL_S

PATCHES = "docs/reference/patches.md"


class _Stop(Exception):
    """Ends a loop of Flower's once the test has seen what it came for."""


def _kept(monkeypatch: pytest.MonkeyPatch, module: Any, *names: str) -> None:
    """The module's attributes as they are now, set back after the test, whatever fedsim installs over them."""
    for name in names:
        monkeypatch.setattr(module, name, getattr(module, name))


def _recording(real: Any, calls: list[dict], result: Any) -> Any:
    """A stand-in for Flower's `real`: each call must fit `real`'s signature; its keywords are recorded; it returns
    `result(*args, **kwargs)` (or raises what that raises)."""

    def stand_in(*args: Any, **kwargs: Any) -> Any:
        inspect.signature(real).bind(*args, **kwargs)
        calls.append(kwargs)
        return result(*args, **kwargs)

    return stand_in


def _function_tree(function: Any) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(function)))


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for a Name or an Attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _calls(function: Any, name: str) -> list[ast.Call]:
    """The calls in `function`'s source whose callee is spelled `name` (a bare name or a dotted one)."""
    return [n for n in ast.walk(_function_tree(function)) if isinstance(n, ast.Call) and _dotted(n.func) == name]


def _literal(node: ast.AST) -> Any:
    """A call's argument as its value where the source spells a literal, else as its source text."""
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return ast.unparse(node)


def _binds_locally(function: Any, name: str) -> bool:
    """Whether `function` assigns or imports `name` itself, which would hide the module's global of that name."""
    for node in ast.walk(_function_tree(function)):
        if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store):
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            (a.asname or a.name).split(".")[0] == name for a in node.names
        ):
            return True
    return False


@pytest.fixture
def flower_pulls_kept(monkeypatch):
    """The three pulls short_pulls() wraps, Flower's own again after the test."""
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal
    from flwr.supernode.runtime import run_clientapp

    _kept(monkeypatch, run_clientapp, "pull_and_inflate_object_from_tree")
    _kept(monkeypatch, http_grid, "pull_objects")
    _kept(monkeypatch, start_client_internal, "pull_objects")


@pytest.fixture
def supernode_main(monkeypatch, flower_pulls_kept):
    """fedsim.runtimes.supernode.main() with `body` run where it starts Flower's SuperNode: `body` runs with what
    main() installed in place; after the test, Flower's modules are as they were."""
    from flwr.supernode import start_client_internal

    _kept(monkeypatch, start_client_internal, "time")
    monkeypatch.setattr(sys, "argv", ["fedsim-test"])

    def run(body):
        monkeypatch.setattr(supernode, "flower_supernode", body)
        supernode.main()

    return run


def test_the_pinned_flower_and_ray_are_the_ones_the_patches_were_read_against():
    """Every patch names Flower's and Ray's internals as Flower 1.42 and Ray 2.55.1 spell them."""
    assert version("flwr").startswith("1.42."), (
        f"flwr {version('flwr')} is installed, the patches were read against 1.42: re-verify every row of {PATCHES} "
        "against the new Flower, then move the pin in pyproject.toml"
    )
    assert version("ray") == "2.55.1", (
        f"ray {version('ray')} is installed, the patches were read against 2.55.1: re-verify every Ray row of "
        f"{PATCHES}, then move the pin in pyproject.toml"
    )


# --- SuperNode (fedsim.runtimes.supernode.main) --------------------------------------------------------------------


def _supernode_loop(flower: Any, monkeypatch: pytest.MonkeyPatch, isolation: str) -> Any:
    """Flower's `start_client_internal` with `isolation`, on stand-ins: its first poll brings no message."""
    monkeypatch.setattr(flower, "register_signal_handlers", lambda **kwargs: None)
    monkeypatch.setattr(flower, "_pull_and_store_message", lambda **kwargs: None)  # a poll that brought nothing

    @contextlib.contextmanager
    def connection(**kwargs):
        yield (7, None, None, None, None, None, None, None)  # the node id, then the connection's functions

    monkeypatch.setattr(flower, "_init_connection", connection)
    state = SimpleNamespace(set_node_id=lambda node_id: None)
    factory = SimpleNamespace(state=lambda: state, objectstore_factory=SimpleNamespace(store=lambda: None))

    def flower_supernode() -> None:
        flower.start_client_internal(
            state_factory=factory,
            server_address="127.0.0.1:9092",
            node_config={},
            insecure=True,
            isolation=isolation,
            runtime_api_address="127.0.0.1:9094",
            runtime_dependency_install=False,
        )

    return flower_supernode


def test_the_supernode_idles_through_fedsims_time_and_starts_no_superexec_of_its_own(supernode_main, monkeypatch):
    """Patch `start_client_internal.time` (fedsim.runtimes.supernode.main). Guards Flower's
    `flwr.supernode.start_client_internal.start_client_internal`: after a poll that brought no message it waits
    with its module's `time.sleep` (fedsim's ShortSleeps: IDLE_S, not 3 s). Also the reliance that replaced a
    patch of its `subprocess`: with `--isolation process`, as the federation starts it, it starts no SuperExec
    (the federation starts fedsim's beside it)."""
    from flwr.supernode import start_client_internal as flower

    started, slept = [], []
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kwargs: started.append(command))

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        raise _Stop  # the loop's first idle wait: enough

    monkeypatch.setattr(time, "sleep", sleep)
    with pytest.raises(_Stop):
        supernode_main(_supernode_loop(flower, monkeypatch, "process"))
    assert started == []
    assert slept == [IDLE_S]


def test_fedsims_superexec_gets_the_arguments_flowers_supernode_and_superlink_give_theirs(monkeypatch):
    """No patch, a reliance: fedsim.runtimes.superexec.superexec_argv gives the SuperExec the federation starts
    beside a SuperNode or the SuperLink the arguments that Flower's `start_client_internal` and `SuperLinkLifespan`
    give `flower-superexec` under `--isolation subprocess` (here run on stand-ins, their Popen recording), after
    fedsim's `python -m fedsim.runtimes.superexec`."""
    from flwr.supernode import start_client_internal as flower

    from fedsim.runtimes.superexec import superexec_argv

    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda command, **kwargs: started.append(command))
    monkeypatch.setattr(time, "sleep", lambda seconds: _raise(_Stop()))
    with pytest.raises(_Stop):
        _supernode_loop(flower, monkeypatch, flower.ISOLATION_MODE_SUBPROCESS)()
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


def test_the_supernode_waits_for_its_clientapps_reply_through_fedsims_time(supernode_main, monkeypatch):
    """Patch `start_client_internal.time` (fedsim.runtimes.supernode.main). Guards Flower's
    `flwr.supernode.start_client_internal._push_messages`: while no reply is stored, and while a reply's part is not
    yet in the object store, it waits with its module's `time.sleep` (fedsim's ShortSleeps: LOCAL_S, not 0.5 s)."""
    from flwr.proto.message_pb2 import ObjectTree
    from flwr.supernode import start_client_internal as flower

    slept, pushed = [], []
    monkeypatch.setattr(time, "sleep", slept.append)
    reply = SimpleNamespace(
        metadata=SimpleNamespace(group_id="", run_id=1, message_type="train", message_id="r", reply_to_message_id="q")
    )
    stored = iter([[], [reply]])  # no reply at the first look, one at the second
    state = SimpleNamespace(
        get_messages_legacy=lambda is_reply: next(stored),
        get_message_processing_duration=lambda message_id: 0.0,
        delete_messages=lambda message_ids: None,
    )
    contents = iter([b"", b"payload"])  # the reply's part: not there yet, then there
    store = SimpleNamespace(
        get_object_tree=lambda message_id: ObjectTree(object_id="r"),
        get=lambda object_id: next(contents),
        delete=lambda object_id: None,
    )

    def body() -> None:
        flower._push_messages(
            state=state,
            object_store=store,
            send=lambda message, tree, runtime: ({"r"}, "session"),
            push_object=lambda run_id, session, object_id, content: pushed.append((object_id, content)),
        )

    supernode_main(body)
    assert pushed == [("r", b"payload")]
    assert slept == [LOCAL_S, LOCAL_S]


def test_the_supernode_pulls_a_messages_parts_with_fedsims_backoff(supernode_main, monkeypatch):
    """Patch `start_client_internal.pull_objects` (fedsim.runtimes.superexec.short_pulls, from the SuperNode's
    main). Guards Flower's `flwr.supernode.start_client_internal._pull_and_store_message`: it pulls a message's
    parts from the SuperLink with its module's `pull_objects`, which then takes fedsim's backoff."""
    from flwr.proto.message_pb2 import ObjectTree
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode import start_client_internal as flower

    pulls, confirmed, stored = [], [], {}
    monkeypatch.setattr(
        flower, "pull_objects", _recording(inflatable_utils.pull_objects, pulls, lambda *a, **k: {"part": b"bytes"})
    )
    message = SimpleNamespace(metadata=SimpleNamespace(group_id="", run_id=5, message_type="train", message_id="m"))
    state = SimpleNamespace(
        get_run=lambda run_id: SimpleNamespace(primary_task_type="", fab_hash="h"),  # a run the node knows
        create_task=lambda **kwargs: 1,
        store_message=lambda message: None,
    )
    store = SimpleNamespace(preregister=lambda run_id, tree: ["part"], put=stored.__setitem__)
    got = []

    def body() -> None:
        got.append(
            flower._pull_and_store_message(
                state=state,
                object_store=store,
                node_config={},
                receive=lambda: (message, ObjectTree(object_id="m")),
                get_run=None,
                get_fab=None,
                pull_object=None,
                confirm_message_received=lambda run_id, message_id: confirmed.append(message_id),
                trusted_entities=None,
            )
        )

    supernode_main(body)
    assert got == [5] and confirmed == ["m"] and stored == {"part": b"bytes"}
    assert [(p["initial_backoff"], p["backoff_cap"]) for p in pulls] == [(IDLE_S, IDLE_S)]


# --- the apps' processes (fedsim.runtimes.superexec.fork_server: short_pulls, install_once) ------------------------


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
        _recording(inflatable_utils.pull_and_inflate_object_from_tree, pulls, lambda *a, **k: pulled),
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

    monkeypatch.setattr(http_grid, "pull_objects", _recording(inflatable_utils.pull_objects, pulls, unavailable))
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
    assert not _binds_locally(function, "install_from_fab")
    (call,) = _calls(function, "install_from_fab")
    given = inspect.signature(install_from_fab).bind(
        *map(_literal, call.args), **{k.arg: _literal(k.value) for k in call.keywords}
    )
    assert given.arguments.get("install_dir") is None and given.arguments.get("skip_prompt") is True, ast.unparse(call)
    for name in APP_MODULES:  # install_once patches both
        _kept(monkeypatch, importlib.import_module(name), "install_from_fab")
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

    _kept(monkeypatch, subprocess_executor, "subprocess")
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


# --- simulation on Ray (fedsim.runtimes.simulation, fedsim.runtimes.cluster) ----------------------------------------


def _sigterm_cfg(address: str | None) -> Any:
    return OmegaConf.create(
        {"ray": {"address": address}, "resources": {"num_cpus": 1, "num_gpus": 0}, "log_level": "WARNING"}
    )


def test_ray_init_replaces_the_sigterm_handler_and_start_ray_puts_fedsims_back(monkeypatch):
    """No patch: fedsim.runtimes.simulation.start_ray starts the run's private Ray itself and puts back the SIGTERM
    handler ray.init replaced, with `signal.signal`. Ray's own `ray.init` runs up to just past the point where it
    installs its handler (an unknown keyword then stops it, before any Ray process starts): Ray did install its
    handler, and the one in place afterwards is the one before."""
    import ray

    from fedsim.runtimes import simulation

    ray_logger = logging.getLogger("ray")
    monkeypatch.setattr(ray_logger, "handlers", list(ray_logger.handlers))
    before = signal.getsignal(signal.SIGTERM)
    installed = []
    flowers_init = ray.init

    def init(**kwargs: Any) -> None:
        assert kwargs == simulation.backend_config(_sigterm_cfg(None))["init_args"]  # what Flower's backend passes
        flowers_init(address="local", configure_logging=False, _fedsim_test_stops_here=True)

    def recorded(signum: int, handler: Any) -> Any:
        installed.append((signum, handler))
        return setting(signum, handler)

    setting = signal.signal
    monkeypatch.setattr(signal, "signal", recorded)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(RuntimeError, match="_fedsim_test_stops_here"):
        simulation.start_ray(_sigterm_cfg(None))
    monkeypatch.undo()
    assert [signum for signum, _ in installed] == [signal.SIGTERM, signal.SIGTERM]  # Ray's, then fedsim's again
    assert installed[0][1] is not before and installed[1][1] is before
    assert signal.getsignal(signal.SIGTERM) is before
    assert not ray.is_initialized()


def test_a_run_attaching_to_its_cluster_keeps_fedsims_sigterm_handler(monkeypatch):
    """No patch: the cluster's ray.init (fedsim.runtimes.cluster.attach) is inside start_ray too, so Ray's handler
    never replaces fedsim's on a cluster either."""
    from fedsim.runtimes import simulation

    before = signal.getsignal(signal.SIGTERM)

    def attach(cfg: Any) -> int:  # ray.init as Ray's sets its handler
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        return 5

    monkeypatch.setattr(simulation, "attach", attach)
    assert simulation.start_ray(_sigterm_cfg("auto")) == 5
    assert signal.getsignal(signal.SIGTERM) is before


def test_flowers_ray_backend_uses_the_ray_fedsim_started(monkeypatch):
    """No patch, a reliance: Flower's `RayBackend.init_ray` calls ray.init only while Ray is not initialised, so
    the private instance start_ray started (with the same `init_args`) is the one the run's actors use, and
    Flower's ray.init, which would install Ray's SIGTERM handler again, never runs."""
    import ray
    from flwr.server.superlink.fleet.vce.backend import raybackend

    from fedsim.runtimes.simulation import backend_config

    calls = []
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # Flower's init_ray sets PYTHONPATH when it starts Ray
    raybackend.RayBackend(backend_config(_sigterm_cfg(None)))
    assert calls == []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # the net: it does call ray.init when Ray is not up
    raybackend.RayBackend(backend_config(_sigterm_cfg(None)))
    assert len(calls) == 1 and calls[0]["address"] == "local"


def test_client_slots_read_the_cpu_count_a_private_ray_node_takes(monkeypatch):
    """Read, not patched: `ray._private.utils.get_num_cpus` (fedsim.runtimes.simulation.local_client_slots). Guards
    Ray's `ray._private.resource_and_label_spec.ResourceAndLabelSpec.resolve`, which gives a node started without
    num_cpus (Flower's private instance) `ray._private.utils.get_num_cpus()` CPUs: fedsim counts this machine's
    client slots from the same number."""
    from ray._private import utils
    from ray._private.ray_constants import RESOURCES_ENVIRONMENT_VARIABLE
    from ray._private.resource_and_label_spec import ResourceAndLabelSpec

    from fedsim.runtimes.simulation import local_client_slots

    monkeypatch.delenv(RESOURCES_ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.setattr(utils, "get_num_cpus", lambda *args, **kwargs: 7)
    assert ResourceAndLabelSpec().resolve(is_head=True, node_ip_address="127.0.0.1").num_cpus == 7
    for num_cpus, slots in ((1, 7), (2, 3), (0.5, 14)):
        assert local_client_slots(OmegaConf.create({"resources": {"num_cpus": num_cpus, "num_gpus": 0}})) == slots


class _PicklingActors:
    """Flower's ClientAppActor class as its actor pool uses it (`.options(**resources).remote()`), making actors whose
    `run.remote(...)` pickles the message and context as Ray pickles a task's arguments (pickle protocol 5, buffers
    handed to a callback), and whose result `ray.get` unpickles."""

    def __init__(self) -> None:
        self.made = 0
        self.sent: list[tuple[bytes, list]] = []  # each task's pickle stream and its out-of-band buffers

    def options(self, **resources: Any) -> _PicklingActors:
        return self

    def remote(self, **kwargs: Any) -> SimpleNamespace:
        self.made += 1
        return SimpleNamespace(run=SimpleNamespace(remote=self._run), terminate=SimpleNamespace(remote=lambda: None))

    def _run(self, app_fn: Any, message: Message, cid: str, context: Context) -> _Future:
        import ray.cloudpickle

        buffers: list = []
        stream = ray.cloudpickle.dumps((message, context), protocol=5, buffer_callback=buffers.append)
        self.sent.append((stream, buffers))
        return _Future(cid, stream, buffers)


class _Future:
    def __init__(self, cid: str, stream: bytes, buffers: list) -> None:
        self.cid, self.stream, self.buffers = cid, stream, buffers

    def result(self) -> tuple[str, Message, Context]:
        import ray.cloudpickle

        message, context = ray.cloudpickle.loads(self.stream, buffers=self.buffers)
        return self.cid, message, context


@pytest.fixture
def ray_backend(monkeypatch):
    """Flower's RayBackend on no Ray: its pool's actors are _PicklingActors, a cluster of 8 client slots."""
    import ray
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.simulation.ray_transport import ray_actor

    actors = _PicklingActors()
    monkeypatch.setattr(raybackend.RayBackend, "init_ray", lambda self, config: None)
    monkeypatch.setattr(raybackend, "ClientAppActor", actors)
    monkeypatch.setattr(ray_actor, "pool_size_from_resources", lambda resources: 8)  # what ray.nodes() would give
    monkeypatch.setattr(ray, "get", lambda future: future.result())
    backend = raybackend.RayBackend({"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0}})
    return backend, actors


def test_flowers_ray_backend_sizes_its_pool_through_the_capped_pool_size(ray_backend):
    """Patch `ray_actor.pool_size_from_resources` (fedsim.runtimes.cluster.actor_pool_limit). Guards Flower's
    `flwr.server.superlink.fleet.vce.backend.raybackend.RayBackend.build` and the `BasicActorPool` it builds
    (flwr.simulation.ray_transport.ray_actor): the pool's capacity, the actors the backend starts, comes from
    the module's `pool_size_from_resources`, so the run starts no more than fedsim's limit."""
    from fedsim.runtimes.cluster import actor_pool_limit

    backend, actors = ray_backend
    with actor_pool_limit(3):
        backend.build(lambda: None)
    assert backend.num_workers == 3 and actors.made == 3
    with actor_pool_limit(20):
        backend.build(lambda: None)
    assert backend.num_workers == 8  # the cluster's slots, when fewer than the limit


def test_flowers_simulation_runtime_builds_and_ends_its_backend_through_the_methods_kept_warm_replaces(
    ray_backend, monkeypatch
):
    """Patch `RayBackend.build` and `RayBackend.terminate` (fedsim.runtimes.warm, for each run inside
    `kept_warm`). Guards Flower's `flwr.server.superlink.fleet.vce.vce_api.run_api`, the simulation runtime each
    run starts: it builds its backend's actor pool through `build` and ends it through `terminate`; inside
    kept_warm the second run gets the first run's actors and neither run ends them or Ray, a run with other Ray
    settings ends them first, and a run outside gets Flower's own methods."""
    import ray
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend

    from fedsim.runtimes.cluster import actor_pool_limit
    from fedsim.runtimes.warm import kept_warm, ray_for

    _, actors = ray_backend
    ended: list[str] = []
    monkeypatch.setattr(ray, "shutdown", lambda: ended.append("ray"))
    monkeypatch.setattr(ray, "is_initialized", lambda: bool(actors.made))
    stopped = threading.Event()
    stopped.set()  # the runtime's threads end at once: the test is about the backend's life
    backends: list[Any] = []

    def backend_fn() -> Any:
        backends.append(raybackend.RayBackend({"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0}}))
        return backends[-1]

    def run(settings: dict | None, app_fn: Any) -> None:
        with ray_for(settings), actor_pool_limit(2):
            vce_api.run_api(app_fn, backend_fn, {}, SimpleNamespace(state=lambda: None), {}, stopped, None)

    with kept_warm():
        run({"cpus": 1}, lambda: "first run's app")
        run({"cpus": 1}, lambda: "second run's app")
        assert actors.made == 2 and ended == []  # one pool, built by the first run
        assert backends[0].pool is backends[1].pool and backends[1].app_fn() == "second run's app"
        run({"cpus": 2}, lambda: None)  # other Ray settings: the warm instance ended, a new one kept
        assert actors.made == 4 and ended == ["ray"]
    assert ended == ["ray", "ray"]  # the runner's end ends Ray
    run({"cpus": 1}, lambda: None)  # outside kept_warm, Flower's own methods: its terminate ends Ray too
    assert actors.made == 6 and ended == ["ray", "ray", "ray", "ray"]


def test_flowers_simulation_runtime_waits_on_queues_of_the_class_short_queue_waits_puts_in(ray_backend, monkeypatch):
    """Patch `flwr.server.superlink.fleet.vce.vce_api.Queue` (fedsim.runtimes.simulation.short_queue_waits). Guards
    Flower's `vce_api.run_api` and its threads (`worker`, `put_message_into_state`): the queues they wait on are
    made through the module's `Queue`, and they wait with a timeout, which ShortWaits caps at QUEUE_WAIT_S."""
    import queue

    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.server.superlink.fleet.vce.backend import raybackend

    from fedsim.runtimes.cluster import actor_pool_limit
    from fedsim.runtimes.simulation import QUEUE_WAIT_S, ShortWaits, short_queue_waits

    stopped = threading.Event()
    asked, waited = [], []

    def empty(self: Any, block: bool = True, timeout: float | None = None) -> Any:
        waited.append(timeout)
        raise queue.Empty

    def asks(self: Any, block: bool = True, timeout: float | None = None) -> Any:
        asked.append(timeout)
        stopped.set()  # the runtime ends once each of its threads has looked
        return capped(self, block, timeout)

    capped = ShortWaits.get
    monkeypatch.setattr(queue.Queue, "get", empty)
    monkeypatch.setattr(ShortWaits, "get", asks)
    backend_fn = lambda: raybackend.RayBackend({"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0}})  # noqa: E731
    with actor_pool_limit(1), short_queue_waits():
        vce_api.run_api(lambda: None, backend_fn, {}, SimpleNamespace(state=lambda: None), {}, stopped, None)
    assert asked and set(asked) == {1.0}  # Flower's own wait, on fedsim's queues
    assert set(waited) == {QUEUE_WAIT_S}  # which wait at most QUEUE_WAIT_S
    assert vce_api.Queue is queue.Queue  # Flower's again after the run


def test_flowers_ray_backend_hands_ray_a_message_whose_arrays_pickle_out_of_band(ray_backend, task_identity):
    """Patch `copyreg.pickle(flwr.app.Array, ...)` (fedsim.messages.records). Guards Flower's
    `RayBackend.process_message` (and `BasicActorPool.submit`): the Message object itself, not an encoding of it,
    goes to the actor's `run.remote`, and its ArrayRecord still holds `flwr.app.Array` instances (copyreg matches
    the exact type), so pickled as Ray pickles a task's arguments each array's bytes leave the pickle stream."""
    from fedsim.runtimes.cluster import actor_pool_limit

    backend, actors = ray_backend
    with actor_pool_limit(1):
        backend.build(lambda: None)
    weights = np.arange(1 << 16, dtype=np.float32)
    message = Message(
        RecordDict({"arrays": to_record(["w"], [weights])}), dst_node_id=2, message_type=MessageType.TRAIN
    )
    context = Context(run_id=1, node_id=2, node_config={"partition-id": 0}, state=RecordDict(), run_config={})
    arrived, _ = backend.process_message(message, context)
    ((stream, buffers),) = actors.sent
    assert sum(b.raw().nbytes for b in buffers) >= weights.nbytes  # the array's bytes went out of band
    assert len(stream) < weights.nbytes // 10
    array = arrived.content["arrays"]["w"]
    assert type(array) is Array and array.data == message.content["arrays"]["w"].data


def test_ray_pickles_a_tasks_arguments_with_protocol_5_and_a_buffer_callback():
    """Patch `copyreg.pickle(flwr.app.Array, ...)` (fedsim.messages.records). Guards Ray's
    `ray._private.serialization.SerializationContext._serialize_to_pickle5`, read from the installed source: it
    pickles with `ray.cloudpickle` (whose pickler consults copyreg's table), protocol 5 and a buffer callback,
    which is what hands the bytes fedsim's reduction exposes out of band."""
    import ray.cloudpickle
    from ray._private import serialization

    assert serialization.pickle is ray.cloudpickle
    (call,) = _calls(serialization.SerializationContext._serialize_to_pickle5, "pickle.dumps")
    keywords = {k.arg: k.value for k in call.keywords}
    assert ast.literal_eval(keywords["protocol"]) == 5 and "buffer_callback" in keywords
    buffers: list = []
    array = to_record(["w"], [np.zeros(4096, np.float32)])["w"]
    ray.cloudpickle.dumps(array, protocol=5, buffer_callback=buffers.append)
    assert sum(b.raw().nbytes for b in buffers) == len(array.data)


# --- differential privacy (fedsim.privacy.dp) -----------------------------------------------------------------------


def _reply(update: np.ndarray, metrics: dict) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(update)}), "metrics": MetricRecord(metrics)})
    return Message(content, dst_node_id=2, message_type=MessageType.TRAIN)


@pytest.mark.parametrize("norm, clipped", [(3.0, True), (0.5, False)])
def test_server_side_adaptive_clipping_moves_the_norm_toward_the_target_quantile(norm, clipped, task_identity):
    """No patch: server-side adaptive clipping is fedsim's own wrapper (fedsim.privacy.adaptive, in place of an
    override of Flower's private `_geometric_update`): after clipping the replies the norm follows fedsim's rule
    (more clipped than the target: it grows), not Flower 1.42's (it would shrink)."""
    from fedsim.privacy.dp import WEIGHT_KEY, Privacy

    privacy = Privacy(mode="server_adaptive", noise_multiplier=0.0, initial_clipping_norm=1.0, clip_norm_lr=0.2)
    strategy = privacy.wrap(FedAvg(), num_sampled_clients=2)
    start = np.zeros(8, np.float32)
    strategy.configure_train(
        1, ArrayRecord({"w": Array(start)}), ConfigRecord(), SimpleNamespace(get_node_ids=lambda: [2, 3])
    )
    update = np.full(8, norm / math.sqrt(8), np.float32)  # of L2 norm `norm`
    strategy.aggregate_train(1, [_reply(start + update, {WEIGHT_KEY: 1, "num-examples": 4}) for _ in range(2)])
    fraction = 1.0 if clipped else 0.0
    assert strategy.clipping_norm == pytest.approx(math.exp(0.2 * (fraction - 0.5)))


@pytest.mark.parametrize("clipped", [True, False])
def test_client_side_adaptive_clipping_moves_the_norm_toward_the_target_quantile(clipped, task_identity):
    """No patch: client-side adaptive clipping is fedsim's own wrapper (fedsim.privacy.adaptive): it counts the
    `norm_bit` Flower's `adaptiveclipping_mod` reports and moves the norm by fedsim's rule, not Flower 1.42's."""
    from flwr.supercore.differential_privacy import KEY_NORM_BIT

    from fedsim.privacy.dp import WEIGHT_KEY, Privacy

    privacy = Privacy(mode="client_adaptive", noise_multiplier=0.0, initial_clipping_norm=1.0, clip_norm_lr=0.2)
    strategy = privacy.wrap(FedAvg(), num_sampled_clients=2)
    metrics = {WEIGHT_KEY: 1, "num-examples": 4, KEY_NORM_BIT: int(clipped)}  # as adaptiveclipping_mod sends it
    strategy.aggregate_train(1, [_reply(np.ones(8, np.float32), metrics) for _ in range(2)])
    fraction = 1.0 if clipped else 0.0
    assert strategy.clipping_norm == pytest.approx(math.exp(0.2 * (fraction - 0.5)))


# --- strategies (fedsim.outputs.checkpointer, fedsim.config.validate) ----------------------------------------------


def test_a_strategys_state_is_in_its_instance_attributes_which_a_checkpoint_restores(task_identity):
    """Read and set, not patched: a strategy's state through `vars()` and `setattr`
    (fedsim.outputs.checkpointer.strategy_state, restore_strategy). Guards Flower's FedAdam (`FedOpt`): what a round
    carries to the next (its moments `m_t`, `v_t`) is held in instance attributes of arrays, so a strategy rebuilt
    from a checkpoint aggregates the next round to the same bits as the one that went on."""
    from flwr.serverapp.strategy import FedAdam

    from fedsim.outputs.checkpointer import restore_strategy, strategy_state

    grid = SimpleNamespace(get_node_ids=lambda: [2, 3])
    rng = np.random.default_rng(0)
    weights = ArrayRecord({"w": Array(np.zeros(6, np.float32))})

    def round_(strategy: Any, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        replies = [
            _reply(arrays["w"].numpy() + rng.normal(size=6).astype(np.float32), {"num-examples": 4}) for _ in range(2)
        ]
        return strategy.aggregate_train(server_round, replies)[0]

    went_on = FedAdam()
    weights = round_(went_on, 1, weights)
    tensors, layout = strategy_state(went_on)
    assert {"m_t", "v_t"} <= set(layout)
    rebuilt = FedAdam()
    restore_strategy(rebuilt, tensors, layout)
    state = rng.bit_generator.state
    expected = round_(went_on, 2, weights)
    rng.bit_generator.state = state  # the same replies for the rebuilt strategy
    assert round_(rebuilt, 2, weights)["w"].numpy().tobytes() == expected["w"].numpy().tobytes()


def test_the_clipping_keys_and_helpers_fedsim_reads_are_the_ones_flowers_clipping_mods_use():
    """Read, not patched: `flwr.supercore.differential_privacy` (its keys and helpers: fedsim.privacy.adaptive,
    fedsim.privacy.fixed_denominator). Guards Flower's client-side clipping mods: they read the norm from the
    round's config under the same KEY_CLIPPING_NORM and report under the same KEY_NORM_BIT, and clip with
    `adaptive_clip_inputs_inplace`, whose True means clipped."""
    from flwr.clientapp.mod import centraldp_mods
    from flwr.supercore import differential_privacy

    assert centraldp_mods.KEY_CLIPPING_NORM == differential_privacy.KEY_CLIPPING_NORM
    assert centraldp_mods.KEY_NORM_BIT == differential_privacy.KEY_NORM_BIT
    assert centraldp_mods.compute_adaptive_clip_model_update is differential_privacy.compute_adaptive_clip_model_update
    assert _calls(differential_privacy.compute_adaptive_clip_model_update, "adaptive_clip_inputs_inplace")
    update = [np.full(4, 2.0)]
    assert differential_privacy.adaptive_clip_inputs_inplace(update, 1.0) is True and np.linalg.norm(update[0]) <= 1
    assert differential_privacy.adaptive_clip_inputs_inplace([np.full(4, 0.1)], 1.0) is False


def test_a_fixed_clipping_wrappers_norm_is_its_clipping_norm_attribute():
    """Read and set, not patched: `clipping_norm` of Flower's fixed-clipping wrappers
    (fedsim.outputs.privacy_budget.PrivacyBudget keeps it in a checkpoint and sets it back on resume, as for
    fedsim's adaptive wrappers). Guards Flower's `DifferentialPrivacyServerSideFixedClipping` and
    `DifferentialPrivacyClientSideFixedClipping`: the norm they clip to is that attribute."""
    from flwr.serverapp.strategy import (
        DifferentialPrivacyClientSideFixedClipping,
        DifferentialPrivacyServerSideFixedClipping,
    )

    for wrapper in (DifferentialPrivacyServerSideFixedClipping, DifferentialPrivacyClientSideFixedClipping):
        assert wrapper(FedAvg(), 1.0, 2.5, 2).clipping_norm == 2.5
    assert "self.clipping_norm" in inspect.getsource(DifferentialPrivacyServerSideFixedClipping.aggregate_train)
    assert "self.clipping_norm" in inspect.getsource(DifferentialPrivacyClientSideFixedClipping.configure_train)


# --- Hydra (fedsim.cli.command, fedsim.config.compose) -------------------------------------------------------------


def test_main_pys_command_line_is_read_with_the_parser_hydra_main_uses():
    """Read, not patched: `hydra._internal.utils.get_args_parser` (fedsim.cli.command.check_command_line). Guards
    Hydra's `hydra.main.main`, read from the installed source: the function `@hydra.main` wraps around main.py
    parses the command line with that very parser, so fedsim checks the words Hydra will run; and the parser
    still gives every attribute check_command_line reads."""
    from hydra._internal.utils import get_args_parser

    from fedsim.cli.command import check_command_line

    hydra_main = sys.modules["hydra.main"]  # the module: `hydra.main` is also the decorator
    assert hydra_main.get_args_parser is get_args_parser
    assert _calls(hydra_main.main, "get_args_parser") and not _binds_locally(hydra_main.main, "get_args_parser")
    read = {
        n.attr
        for n in ast.walk(_function_tree(check_command_line))
        if isinstance(n, ast.Attribute) and _dotted(n.value) == "args"
    }
    parsed = vars(get_args_parser().parse_args(["num_clients=4", "+x=1"]))
    assert read and read <= set(parsed), read - set(parsed)
    assert parsed["overrides"] == ["num_clients=4", "+x=1"]


def test_composing_conf_leaves_hydra_as_it_found_it(tmp_path):
    """Read, not patched: `hydra.initialize.get_gh_backup` and `restore_gh_from_backup`
    (fedsim.config.compose._on_conf). Guards what fedsim takes them to do: a compose of conf/ inside an initialized
    Hydra (a resumed run, inside `@hydra.main`) leaves Hydra on the config it was initialized with, and one
    outside any leaves Hydra uninitialized."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fedsim.config.compose import compose

    (tmp_path / "config.yaml").write_text("mine: 1\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        assert "num_clients" in compose([])
        assert GlobalHydra.instance().is_initialized()
        assert OmegaConf.to_container(hydra_compose(config_name="config")) == {"mine": 1}
    assert "num_clients" in compose([])
    assert not GlobalHydra.instance().is_initialized()


def test_config_keys_are_walked_without_resolving_their_values():
    """Read, not patched: OmegaConf's private `DictConfig._get_node` (fedsim.config.overrides.keys,
    fedsim.config.resume._rename_targets). Guards what fedsim takes it to do: give a key's node without
    resolving its value, so a tree with interpolations that cannot resolve here, or missing values, is walked."""
    from fedsim.config.overrides import keys

    cfg = OmegaConf.create({"a": {"b": "${oc.env:FEDSIM_TEST_NEVER_SET}", "c": {"d": "???"}}, "e": "${nowhere}"})
    assert list(keys(cfg)) == ["a", "a.b", "a.c", "a.c.d", "e"]


# --- Flower names read, not patched ----------------------------------------------------------------------------------


def test_every_error_code_fedsim_names_is_one_flower_has():
    """Read, not patched: `flwr.common.constant.ErrorCode`, which Flower's public packages do not export (fedsim's
    messages.error_replies, messages.carried, server.participation). Guards that each `ErrorCode.NAME` fedsim's code
    spells is still one of Flower's codes: a renamed code would fail only on the error path that uses it."""
    from flwr.common.constant import ErrorCode

    import fedsim

    named = {
        node.attr
        for path in Path(fedsim.__file__).parent.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and _dotted(node.value) == "ErrorCode"
    }
    assert named and not {name for name in named if not hasattr(ErrorCode, name)}


def test_flowers_simulation_runtime_processes_each_message_through_the_method_retried_replaces(
    ray_backend, task_identity, monkeypatch, capsys
):
    """Patch `RayBackend.process_message` (fedsim.runtimes.recovery.retried, for each simulation). Guards Flower's
    `flwr.server.superlink.fleet.vce.vce_api.worker`, the thread that hands each message to the backend: it goes
    through `process_message`, whose replacement takes a dead actor out of the pool (`BasicActorPool.pool`,
    `_future_to_actor`, `create_actor_fn`, read here too), adds a new one, sends the message again and marks
    the reply; Flower's worker stores that reply."""
    import queue

    import ray
    from flwr.server.superlink.fleet.vce import vce_api
    from ray.exceptions import ActorDiedError

    from fedsim.messages.retries import RETRIES
    from fedsim.runtimes.cluster import actor_pool_limit
    from fedsim.runtimes.recovery import RayWatch, retried

    backend, actors = ray_backend
    with actor_pool_limit(2):
        backend.build(lambda: None)
    deaths = [ActorDiedError()]  # the first task's actor dies

    def get(future: Any) -> Any:
        if deaths:
            raise deaths.pop()
        return future.result()

    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(ray, "wait", lambda futures, timeout: (futures, []))
    watch = RayWatch()
    monkeypatch.setattr(watch, "lost", lambda: None)
    monkeypatch.setattr(watch, "node_dead", lambda: None)
    config = ConfigRecord({"server-round": 2})
    message = Message(RecordDict({"config": config}), dst_node_id=7, message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 4}, state=RecordDict(), run_config={})
    store = SimpleNamespace(retrieve_context=lambda run_id: context, update_context=lambda run_id, context: None)
    inbox, outbox, stop = queue.Queue(), queue.Queue(), threading.Event()
    inbox.put(message)
    metrics = SimpleNamespace(add_clientapp_runtime=lambda seconds: None)
    with retried(2, watch):
        worker = threading.Thread(target=vce_api.worker, args=(inbox, outbox, {7: store}, backend, stop, metrics))
        worker.start()
        reply = outbox.get(timeout=30)
        stop.set()
        worker.join(timeout=30)
    assert not reply.has_error() and dict(reply.content[RETRIES])["count"] == 1
    assert actors.made == 3 and len(backend.pool.pool) == 2  # the dead actor replaced, the pool's size kept
    assert capsys.readouterr().err.startswith("warning: round 2: the Ray worker died while training client 4;")


def test_rays_driver_relays_its_nodes_errors_through_the_name_engine_logs_to_replaces(tmp_path):
    """Patch `ray._private.worker.print_to_stdstream` (fedsim.runtimes.engine_logs.engine_logs_to, for each
    simulation at log_level WARNING and above), and read `print_worker_logs`. Guards Ray's
    `listen_error_messages`, the driver's thread that prints the errors its nodes publish (a dead worker, a
    raylet's log dump): it prints them through the module's `print_to_stdstream`, which now appends them to
    main.log (reads the source: the thread needs a GCS)."""
    from ray._private import worker

    from fedsim.runtimes.engine_logs import engine_logs_to

    calls = [
        node.func.id
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(worker.listen_error_messages))))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]
    assert "print_to_stdstream" in calls
    log = tmp_path / "main.log"
    with engine_logs_to(log, "WARNING"):
        worker.print_to_stdstream({"lines": ["A worker died"], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        logging.getLogger("flwr").error("An exception was raised when processing a message")
    assert "A worker died" in log.read_text() and "An exception was raised" in log.read_text()
    assert worker.print_to_stdstream.__name__ == "print_to_stdstream"  # Ray's own again


def test_the_supernode_sends_its_heartbeats_at_the_interval_fedsim_sets(monkeypatch):
    """Patch `HEARTBEAT_DEFAULT_INTERVAL` of `flwr.supernode.fleet_http_connection` and `flwr.supercore.heartbeat`
    (fedsim.runtimes.supernode.main). Guards Flower's SuperNode: it tells the SuperLink its interval with the first
    module's global when it activates and with each heartbeat (reads the source: that needs a SuperLink), and its
    `HeartbeatSender` waits between heartbeats by the second's (run here), so the SuperLink counts a dead node
    offline after two of fedsim's intervals, and a live one that sends at that pace never."""
    from flwr.common.constant import HEARTBEAT_DEFAULT_INTERVAL, HEARTBEAT_MIN_INTERVAL
    from flwr.supercore import heartbeat
    from flwr.supernode import fleet_http_connection

    tree = ast.parse(inspect.getsource(fleet_http_connection))
    uses = [node for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id == "HEARTBEAT_DEFAULT_INTERVAL"]
    assert len(uses) >= 2 and all(isinstance(node.ctx, ast.Load) for node in uses)  # activation, heartbeats
    assert "HEARTBEAT_DEFAULT_INTERVAL" in fleet_http_connection.__dict__
    assert HEARTBEAT_MIN_INTERVAL < HEARTBEAT_DEFAULT_INTERVAL
    waits: list[float] = []
    monkeypatch.setattr(heartbeat, "HEARTBEAT_DEFAULT_INTERVAL", HEARTBEAT_MIN_INTERVAL)
    sender = heartbeat.HeartbeatSender(lambda: True)

    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return True

    monkeypatch.setattr(sender, "_stop_event", SimpleNamespace(wait=wait, is_set=lambda: bool(waits)))
    sender._run()  # one heartbeat, one wait, then stopped
    assert len(waits) == 1 and 0 < waits[0] < HEARTBEAT_MIN_INTERVAL  # within fedsim's interval, not Flower's 30 s

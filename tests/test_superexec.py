"""fedsim's SuperExec: each ClientApp and ServerApp a fork of one warm process, with the arguments Flower gave."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from flwr.cli.build import build_fab_from_disk
from flwr.cli.config_utils import load
from flwr.cli.install import install_from_fab
from helpers.runs import ROOT

from fedsim.runtimes.federation import staged_app
from fedsim.runtimes.superexec import (
    CLIENT_APP,
    ENTRIES,
    IDLE_S,
    ForkServer,
    SubprocessWith,
    installed_once,
    short_pulls,
    start_superexec,
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
def test_only_flowers_superexec_is_replaced_and_other_commands_start_as_given():
    echo = SubprocessWith(start_superexec).Popen(["echo", "flower-superexec"], stdout=subprocess.PIPE, text=True)
    assert echo.communicate(timeout=30)[0] == "flower-superexec\n"
    superexec = start_superexec(["flower-superexec", "--help"], stdout=subprocess.PIPE, text=True)
    help_text = superexec.communicate(timeout=60)[0]
    assert "usage: flower-superexec" in help_text and superexec.args[:3] == [
        sys.executable,
        "-m",
        "fedsim.runtimes.superexec",
    ]


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

"""Flower's SuperExec with its app processes forked from a warm one: `python -m fedsim.runtimes.superexec ARGS`
takes flower-superexec's arguments. fedsim's local federation (fedsim.runtimes.federation) runs its SuperLink and
SuperNodes with Flower's `--isolation process`, under which they start no SuperExec of their own, and starts one
of these beside each (`superexec_argv`): the arguments that process would have given `flower-superexec`.

Flower 1.42 starts a new `flwr-clientapp` process for every message a SuperNode gets (there is no
long-lived ClientApp: flwrlabs/flower#3670). Most of such a process's CPU went to importing Flower
(its SuperNode CLI, object store, SQL and Alembic modules) before it pulled the message, two processes
a round for every node (docs/benchmarks/measured.md, "Deployment's cost per message"). This SuperExec
keeps one warm process (the fork server) that has imported `flwr-clientapp` and `flwr-serverapp` once,
and starts each app as a fork of it: the same command-line arguments and entry point, a process of its
own that pulls its task, installs the FAB, loads the app from it and exits, as Flower's own does. The
server has imported fedsim's ClientApp too, and its children find the FAB installed by the first of them
(`installed_once`) where Flower extracts and checks it again in every process. Nothing else in the
SuperExec changes (its polling, its tokens, the other task types).

The fork server reads one request per line on its stdin (JSON: the arguments, and whether the output
goes to /dev/null, as Flower asks for the ServerApp's) and forks a child for each; it is
single-threaded, so a fork copies no lock another thread held. It ends when its stdin closes, that is
when the SuperExec ends; the apps watch the SuperExec's pid (`--parent-pid`) as before, and they are
the SuperExec's descendants, stopped with it.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import IO, Any

import psutil

IDLE_S = 0.1  # between a SuperNode's polls of the SuperLink, and between retries for a message's parts

MODULE = "fedsim.runtimes.superexec"  # how `python -m` starts this SuperExec and its fork server
CLIENT_APP = "fedsim.client.app"  # the ClientApp's module (pyproject.toml's components), imported by the fork server
ENTRIES = {  # the console scripts the fork server starts, and their functions
    "flwr-clientapp": "flwr.supernode.cli:flwr_clientapp",
    "flwr-serverapp": "flwr.superlink.cli:flwr_serverapp",
}


def serve(entries: Mapping[str, Callable[[], Any]], requests: IO[str]) -> None:
    """The fork server: for each line of `requests` ({"argv": the child's sys.argv, "quiet": bool}), a fork
    that runs `entries[argv[0]]`, until `requests` ends."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped as they exit
    for line in requests:
        request = json.loads(line)
        if os.fork() == 0:
            os._exit(_child(entries[request["argv"][0]], request["argv"], request["quiet"]))


def _child(main: Callable[[], Any], argv: list[str], quiet: bool) -> int:
    """Run `main` as a process started with `argv` would (its output to /dev/null if `quiet`), and its exit
    code."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2) if quiet else (0,):  # the server's requests are not the child's stdin
        os.dup2(devnull, fd)
    os.close(devnull)
    sys.stdin = open(0, closefd=False)
    sys.argv = argv
    random.seed()  # a fresh process's own state (Flower jitters its retries with it), not the server's copy
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def short_pulls() -> None:
    """Retries for a message's parts come every IDLE_S, not after Flower's 1 s, 2 s, 4 s ..., in every Flower
    process fedsim starts.

    A SuperNode stores a message, which is what makes its SuperExec start the ClientApp, before it has
    pulled the message's parts from the SuperLink; the ClientApp asks for them, finds them missing and
    backs off 1 s, then 2 s (Flower's PULL_INITIAL_BACKOFF, doubling): most of a ClientApp process's life
    on localhost. The SuperNode (pulling from the SuperLink) and the ServerApp (a reply whose parts the
    SuperNode is still pushing) wait the same way. Flower's time limit stays; each retry is one request
    to a process on this machine."""
    from flwr.superlink.grid import http_grid  # not in the SuperLink or SuperExec, which import this module
    from flwr.supernode import start_client_internal  # not in the SuperLink or SuperExec, which import this module
    from flwr.supernode.runtime import run_clientapp  # not in the SuperLink or SuperExec, which import this module

    run_clientapp.pull_and_inflate_object_from_tree = partial(
        run_clientapp.pull_and_inflate_object_from_tree, initial_backoff=IDLE_S, backoff_cap=IDLE_S
    )
    http_grid.pull_objects = partial(http_grid.pull_objects, initial_backoff=IDLE_S, backoff_cap=IDLE_S)
    start_client_internal.pull_objects = partial(
        start_client_internal.pull_objects, initial_backoff=IDLE_S, backoff_cap=IDLE_S
    )


def installed_once(install: Callable[..., Path]) -> Callable[..., Path]:
    """Flower's `install_from_fab` as its apps call it (a FAB's bytes into FLWR_HOME, no prompt), extracting and
    checking the FAB once per FLWR_HOME instead of once per process.

    Flower extracts the whole FAB into a temporary folder and checks every file's hash, then finds the app
    already installed and keeps the installed copy, in every ClientApp process. This finds the installed
    folder from the FAB's hash and its pyproject.toml, as Flower names it; the first process to need it
    installs it with Flower's own function into a private folder and renames that into place, so that no
    process ever loads a half-copied app."""

    def install_from_fab(fab_file: Any, install_dir: Path | None = None, skip_prompt: bool = False) -> Path:
        if not isinstance(fab_file, bytes) or install_dir is not None or not skip_prompt:
            return install(fab_file, install_dir, skip_prompt)
        # Flower's CLI modules only in an app process: the SuperLink and SuperNodes import this module too
        from flwr.cli.config_utils import get_fab_metadata  # only in an app process
        from flwr.common.config import get_project_dir  # only in an app process

        path = get_project_dir(*get_fab_metadata(fab_file), hashlib.sha256(fab_file).hexdigest())
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=".installing-") as private:
                installed = install(fab_file, Path(private), True)
                try:
                    os.rename(installed, path)
                except OSError:  # another process installed it first: the same hash, the same files
                    pass
        return path

    return install_from_fab


def install_once() -> None:
    """Every app process forked from here installs its FAB through `installed_once`."""
    for name in ("flwr.supernode.runtime.run_clientapp", "flwr.superlink.runtime.run_serverapp"):
        module = importlib.import_module(name)  # the packages export each function under its module's name
        module.install_from_fab = installed_once(module.install_from_fab)


def fork_server() -> None:
    """`python -m fedsim.runtimes.superexec --fork-server`: import every entry, then serve stdin."""
    short_pulls()
    install_once()
    entries = {}
    for command, entry in ENTRIES.items():
        module, _, name = entry.partition(":")
        entries[command] = getattr(importlib.import_module(module), name)
    importlib.import_module(CLIENT_APP)  # what every ClientApp process loads: imported once, in the server
    serve(entries, sys.stdin)


class ForkServer:
    """The fork server as a child of this process; `popen` starts an app in ENTRIES as its fork and any other
    command as subprocess.Popen does."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", MODULE, "--fork-server"], stdin=subprocess.PIPE, text=True
        )

    def popen(self, args: list[str], **kwargs: Any) -> subprocess.Popen | None:
        if args[0] not in ENTRIES:
            return subprocess.Popen(args, **kwargs)
        assert self.process.stdin is not None
        if self.process.poll() is None:
            try:
                # Flower's SuperExec asks for the ServerApp's output to go nowhere (it streams its logs).
                quiet = kwargs.get("stdout") == subprocess.DEVNULL
                self.process.stdin.write(json.dumps({"argv": args, "quiet": quiet}) + "\n")
                self.process.stdin.flush()
                return None  # Flower's SubprocessExecutor does not keep what Popen returns
            except BrokenPipeError:
                pass
        # The fork server died (its reason is above in the same log): this app starts as Flower's would.
        print(f"fedsim: the fork server exited {self.process.wait()}; {args[0]} starts cold", file=sys.stderr)
        return subprocess.Popen(args, **kwargs)


class SubprocessWith:
    """The `subprocess` module as one Flower module sees it, with `popen` for its Popen."""

    def __init__(self, popen: Callable[..., Any]) -> None:
        self.Popen = popen

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)


def runtime_api_address(host: str, port: int) -> str:
    """Where a SuperExec reaches the Runtime API of a SuperLink or SuperNode bound to `host`:`port`; a bind-all
    host is reached on the loopback, as Flower's own SuperExec reaches it."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def superexec_argv(address: str, parent_pid: int, root_certificates: Path | None = None) -> list[str]:
    """This SuperExec for the SuperLink or SuperNode `parent_pid`, started with `--isolation process`, its Runtime
    API at `address`: the arguments that process gives `flower-superexec` under `--isolation subprocess` (TLS with
    `root_certificates`, or none; runtime dependency installation off, as fedsim runs them). It ends when that
    process does (`--parent-pid`)."""
    tls = ["--insecure"] if root_certificates is None else ["--root-certificates", str(root_certificates)]
    return [sys.executable, "-m", MODULE, *tls, "--runtime-api-address", address, "--parent-pid", str(parent_pid)]


def wait_for_runtime_api(argv: list[str]) -> None:
    """Return once the Runtime API named in `argv` (flower-superexec's arguments) accepts a connection; exit if its
    process (`--parent-pid`) ends first. The federation starts this SuperExec beside a SuperNode that takes a while
    to open its Runtime API, and Flower's SuperExec backs off 1 s, 2 s, ... after a refused connection."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runtime-api-address")
    parser.add_argument("--parent-pid", type=int)
    args, _ = parser.parse_known_args(argv)
    if args.runtime_api_address is None:
        return  # Flower's parser says what is missing
    host, port = args.runtime_api_address.rsplit(":", 1)
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=IDLE_S).close()
            return
        except OSError:
            if args.parent_pid is not None and not psutil.pid_exists(args.parent_pid):
                sys.exit(0)
            time.sleep(IDLE_S)


def main() -> None:
    if sys.argv[1:] == ["--fork-server"]:
        fork_server()
        return
    wait_for_runtime_api(sys.argv[1:])
    from flwr.supercore.cli import flower_superexec  # not in the fork server, SuperLink or SuperNodes
    from flwr.supercore.superexec.executor import subprocess_executor  # not in the fork server, SuperLink or SuperNodes

    subprocess_executor.subprocess = SubprocessWith(ForkServer().popen)
    sys.argv[0] = "flower-superexec"
    flower_superexec()


if __name__ == "__main__":
    main()

"""A real Flower federation on this machine: a SuperLink with TLS and SuperNode authentication, one
SuperNode per partition, and `flwr run` of fedsim's app against it; every process stopped at the end.

Each process logs to its own file in the run's `logs/` folder (superlink.log, supernode_I.log,
flwr-run.log); `flwr run`'s stream (the ServerApp's output) is also relayed to stdout. The app `flwr run`
submits is staged by fedsim.runtimes.staging, the processes' environment made by fedsim.runtimes.environment,
their logs read by fedsim.runtimes.process_logs.
"""

from __future__ import annotations

import json
import shutil
import ssl
import sys
import tempfile
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from fedsim.client.wire import WORKER
from fedsim.runtimes.certs import LOCALHOST, check_certificates, make_all
from fedsim.runtimes.environment import federation_env, flower_home, toml_string
from fedsim.runtimes.node_watch import nodes_kept, wait_joined, wait_workers
from fedsim.runtimes.ports import check_port, free_port
from fedsim.runtimes.process_logs import reason, relay
from fedsim.runtimes.staging import ROOT, staged_app
from fedsim.runtimes.superexec import runtime_api_address, superexec_argv
from fedsim.system.errors import RunFailed
from fedsim.system.processes import Child, Processes, command
from fedsim.system.waits import wait_for


class LocalFederation:
    """SuperLink (TLS, node authentication) and `num_nodes` SuperNodes on `host`, as a context manager.

    Certificates come from `certificates` (a folder made by `python -m fedsim.runtimes.certs`) or are made
    for this federation alone in a temporary folder, removed with it.
    """

    def __init__(
        self,
        num_nodes: int,
        logs: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        certificates: str | None = None,
        node_auth: bool = True,
        startup_timeout_s: float = 60.0,
        verbose: bool = False,
        cwd: Path | None = None,
        max_restarts: int = 0,
    ) -> None:
        self.num_nodes, self.logs, self.host = num_nodes, logs, host
        self.port = port
        self.certificates = Path(certificates).expanduser().resolve() if certificates else None
        self.node_auth, self.startup_timeout_s, self.verbose = node_auth, startup_timeout_s, verbose
        self.cwd = cwd or Path.cwd()
        self.processes = Processes()
        self.work: Path | None = None
        self.app = ROOT  # what `flwr run` submits: a copy of ROOT with what the FAB holds, once started
        self.env: dict[str, str] = {}
        self.workers: list[Child] = []
        self.supernodes: list[Child] = []
        self.max_restarts = max_restarts
        self.certs: Path | None = None
        self.restarts = 0

    def check(self) -> None:
        """The settings that can be checked before anything starts (ConfigError, one line)."""
        if self.port is not None:
            check_port(self.host, self.port)
        if self.certificates is not None:
            check_certificates(self.certificates, self.num_nodes, self.node_auth)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.check()
        self.port = self.port or free_port(self.host)
        self.work = Path(tempfile.mkdtemp(prefix="fedsim-federation-"))
        self.logs.mkdir(parents=True, exist_ok=True)
        self.app = staged_app(ROOT, self.work / "app")
        certs = self.certs = self._certificates()
        self.env = federation_env(flower_home(self.work / "flwr-home", self.address, certs / "ca.crt"), self.work)
        self._start_superlink(certs)
        if self.node_auth:
            self._register(certs)
        self.supernodes = [self.own_supernode(i) for i in range(self.num_nodes)]
        wait_joined(self.supernodes, self.startup_timeout_s)
        wait_workers(self.workers, self.startup_timeout_s)
        self.write_pids()

    def write_pids(self) -> None:
        """logs/processes.json: each process's pid (its process group's id too), to watch or stop by hand."""
        (self.logs / "processes.json").write_text(
            json.dumps({c.name: c.pid for c in self.processes.children if c.alive()}, indent=1) + "\n"
        )

    def _certificates(self) -> Path:
        if self.certificates is not None:
            return self.certificates
        certs = self.work / "certs"
        make_all(certs, hosts=(self.host, *LOCALHOST), num_nodes=self.num_nodes if self.node_auth else 0)
        return certs

    def _start_superlink(self, certs: Path) -> None:
        argv = [
            command("flower-superlink"),
            "--ssl-ca-certfile",
            str(certs / "ca.crt"),
            "--ssl-certfile",
            str(certs / "server.crt"),
            "--ssl-keyfile",
            str(certs / "server.key"),
            "--isolation",
            "process",  # its SuperExec is fedsim's, started below
            "--host",
            self.host,
            "--port",
            str(self.port),
            # No --database: the state in memory. The federation lives for one run, and SQLite's state
            # (a query or write for every poll of every node) made every localhost round longer.
            "--disable-runtime-dependency-installation",
        ]
        if self.node_auth:
            argv.append("--enable-supernode-auth")
        superlink = self.processes.start("superlink", argv, log=self.logs / "superlink.log", env=self.env, cwd=self.cwd)
        context = ssl.create_default_context(cafile=str(certs / "ca.crt"))

        def healthy() -> bool:  # its health endpoint, over TLS with the CA the SuperNodes trust
            try:
                urllib.request.urlopen(f"https://{self.address}/health", timeout=1, context=context)
                return True
            except OSError:
                if not superlink.alive():
                    raise RunFailed(
                        f"the SuperLink stopped at start: {reason(superlink.log_tail())} (see {superlink.log})"
                    ) from None
                return False

        wait_for(
            healthy,
            timeout_s=self.startup_timeout_s,
            what=f"the SuperLink to answer on {self.address}",
            key="runtime.startup_timeout_s",
            poll_s=0.3,
            hint=lambda: f"see {superlink.log}",
        )
        address = runtime_api_address(self.host, self.port)
        superexec = superexec_argv(address, superlink.pid, certs / "ca.crt")
        self.processes.start("superlink_superexec", superexec, log=superlink.log, env=self.env, cwd=self.cwd)

    def _register(self, certs: Path) -> None:
        """Flower's SuperNode registration: each node's public key, added through the Control API."""
        registering = [
            self.processes.start(
                f"register node_{i}",
                [command("flwr"), "supernode", "register", str(certs / f"node_{i}.pub")],
                log=self.logs / "register.log",
                env=self.env,
                cwd=self.cwd,
            )
            for i in range(self.num_nodes)
        ]
        for child in registering:
            wait_for(
                lambda child=child: not child.alive(),
                timeout_s=self.startup_timeout_s,
                what=f"{child.name} to register",
                key="runtime.startup_timeout_s",
                hint=lambda child=child: f"see {child.log}",
            )
            if child.process.returncode != 0:
                raise RunFailed(
                    f"{child.name}: `flwr supernode register` failed: {reason(child.log_tail())} (see {child.log})"
                )

    def start_supernode(
        self,
        partition_id: int,
        root_certificates: Path,
        key: Path | None,
        name: str | None = None,
        log: Path | None = None,
        with_worker: bool = True,
    ) -> Child:
        """SuperNode `partition_id` (of num_nodes) trusting `root_certificates`, authenticating with `key`, its
        SuperExec (fedsim.runtimes.superexec), and (unless it is started again and keeps it) its warm worker
        (fedsim.client.worker), which answers the node's messages in one long-lived process."""
        name = name or f"supernode_{partition_id}"
        worker = self.work / f"{name}.sock"
        if with_worker:
            self.workers.append(
                self.processes.start(
                    f"{name}_worker",
                    [sys.executable, "-m", "fedsim.client.worker", str(worker)],
                    log=self.logs / f"{name}_worker.log",
                    env=self.env,
                    cwd=self.cwd,
                )
            )
        argv = [
            sys.executable,  # flower-supernode, its idle waits cut short (fedsim.runtimes.supernode)
            "-m",
            "fedsim.runtimes.supernode",
            "--root-certificates",
            str(root_certificates),
            "--superlink",
            self.address,
            "--node-config",
            f"partition-id={partition_id} num-partitions={self.num_nodes} {WORKER}={toml_string(str(worker))}",
            "--isolation",
            "process",  # its SuperExec is fedsim's, started below
            "--host",
            "127.0.0.1",
            "--port",
            str(port := free_port("127.0.0.1")),
            "--max-retries",
            "3",
        ]
        if key is not None:
            argv += ["--auth-supernode-private-key", str(key)]
        node = self.processes.start(name, argv, log=log or self.logs / f"{name}.log", env=self.env, cwd=self.cwd)
        superexec = superexec_argv(runtime_api_address("127.0.0.1", port), node.pid)
        self.processes.start(f"{name}_superexec", superexec, log=node.log, env=self.env, cwd=self.cwd)
        return node

    def own_supernode(self, partition_id: int, attempt: int = 0) -> Child:
        """The federation's SuperNode for `partition_id`; a later `attempt` (a restart) keeps the node's worker and
        logs to a file of its own."""
        certs = self.certs
        return self.start_supernode(
            partition_id,
            certs / "ca.crt",
            certs / f"node_{partition_id}" if self.node_auth else None,
            log=self.logs / f"supernode_{partition_id}.restart{attempt}.log" if attempt else None,
            with_worker=attempt == 0,
        )

    def run(self, run_config: Mapping[str, str], out: TextIO = sys.stdout) -> int:
        """`flwr run` of fedsim's app with `run_config` (strings), its stream relayed to `out`; its exit code.

        The relay stops at a ServerApp traceback (it stays in flwr-run.log): the run's one-line
        error is in run.json.
        """
        argv = [command("flwr"), "run", str(self.app), "--stream"]
        for key, value in run_config.items():
            argv += ["--run-config", f"{key}={toml_string(value)}"]
        log_path = self.logs / "flwr-run.log"
        process = self.processes.start("flwr run", argv, log=log_path, env=self.env, cwd=ROOT, pipe=True).process
        self.write_pids()
        with nodes_kept(self, out):
            relay(process.stdout, log_path, out, self.verbose)
            return process.wait()

    def stop(self) -> None:
        """Stop every process this federation started (newest first), then remove its temporary folder."""
        self.processes.stop_all()
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)

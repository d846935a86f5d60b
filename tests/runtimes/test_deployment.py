"""The deployment runtime: certificates, process cleanup, lost nodes, a node's own data, and
`python main.py runtime=deployment` end to end over real processes on localhost (TLS, node authentication)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import sys
import time

import numpy as np
import pandas as pd
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)
from flwr.app import Context, Message, MessageType, RecordDict
from flwr.cli.build import build_fab_from_disk
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity
from helpers.configs import RETRY_COLUMNS, SMALL, make_cfg
from helpers.data import make_reviews
from helpers.gates import ADAM_GATE
from helpers.processes import ours
from helpers.runs import ROOT, finished, gated, start_main, terminal_warnings, wait_for_round

import fedsim.server.participation
from fedsim.client.client import client_fn
from fedsim.config.compose import flatten
from fedsim.runtimes.certs import check_certificates, make_all, make_node_key
from fedsim.runtimes.deployment import Deployment
from fedsim.runtimes.environment import federation_env
from fedsim.runtimes.federation import LocalFederation
from fedsim.runtimes.node_watch import wait_joined
from fedsim.runtimes.staging import staged_app
from fedsim.server.participation import Participants
from fedsim.system.errors import ConfigError, RunFailed
from fedsim.system.processes import Processes, alive, descendants


def federation_processes() -> list[int]:
    """Processes of any federation this session's main.py started: they all inherit FEDSIM_FEDERATION."""
    return [p.pid for p in ours(lambda p: "FEDSIM_FEDERATION" in p.environ())]


def test_certificates_chain_to_the_ca_with_every_host_as_san_and_private_keys_private(tmp_path):
    make_all(tmp_path, hosts=("fl.example.org", "10.0.0.7", "localhost"), num_nodes=2)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    for key in ("ca.key", "server.key", "node_0", "node_1"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    private = load_ssh_private_key((tmp_path / "node_1").read_bytes(), None)
    public = load_ssh_public_key((tmp_path / "node_1.pub").read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.public_key() == public  # what Flower reads


def test_a_certificates_folder_that_lacks_files_is_one_line(tmp_path):
    make_all(tmp_path, num_nodes=1)
    with pytest.raises(ConfigError, match=r"^runtime.certificates: .* lacks node_1, node_2; allowed: "):
        check_certificates(tmp_path, 3, node_auth=True)
    check_certificates(tmp_path, 3, node_auth=False)


def test_a_busy_port_is_one_line_before_anything_starts(imdb_dir, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = make_cfg(f"data.path={imdb_dir}", *SMALL, "runtime=deployment", f"runtime.port={port}")
        with pytest.raises(ConfigError, match=rf"^runtime.port: 127.0.0.1:{port} is already in use .*; allowed: "):
            Deployment(port=port).run(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
    assert not (tmp_path / "run" / "logs").exists()  # no process was started


def test_stopping_a_child_stops_what_it_detached_too(tmp_path):
    """Flower's SuperLink starts its SuperExec in a session of its own: a group kill alone misses it."""
    processes = Processes()
    script = "import subprocess, time; subprocess.Popen(['sleep', '300'], start_new_session=True); time.sleep(300)"
    child = processes.start("parent", [sys.executable, "-c", script], log=tmp_path / "log", env=os.environ)
    deadline = time.monotonic() + 10
    while not descendants(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    [detached] = descendants(child.pid)
    assert os.getpgid(detached) != child.pid  # out of the group's reach
    processes.stop_all()
    assert not alive(child.pid) and not alive(detached) and processes.left() == []


class SilentGrid:
    """A grid whose node `lost` took its message and died: no reply ever comes, and it drops offline."""

    def __init__(self, nodes: list[int], lost: int) -> None:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID  # as a ServerApp's
        self.nodes, self.lost, self.pending = nodes, lost, []

    def push_messages(self, messages):
        for i, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{i}"
        self.pending = list(messages)
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids):
        replies = [
            Message(RecordDict(), reply_to=m)
            for m in self.pending
            if m.metadata.dst_node_id != self.lost and m.metadata.message_id in message_ids
        ]
        self.pending = [m for m in self.pending if m.metadata.dst_node_id == self.lost]
        return replies

    def get_node_ids(self):
        return [n for n in self.nodes if n != self.lost]


def test_a_node_that_dies_holding_a_message_becomes_an_error_reply_not_a_hang(monkeypatch):
    monkeypatch.setattr(fedsim.server.participation, "ONLINE_CHECK_S", 0.0)
    participants = Participants({0: 11, 1: 22, 2: 33}, seed=0)
    grid = SilentGrid([11, 22, 33], lost=33)
    messages = [Message(RecordDict(), dst_node_id=0, message_type=MessageType.TRAIN) for _ in range(3)]
    # The lost node's message is awaited to the deadline (it may come back), then answered with an error: a
    # deadline of 2 s, not a round's, since nothing here ever answers it. A timeout would give None, no error.
    replies = participants.exchange(grid, messages, [0, 1, 2], timeout=2)
    assert not replies[0].has_error() and not replies[1].has_error()
    assert (
        replies[2].error.code == ErrorCode.NODE_UNAVAILABLE
        and "node 33 is offline: it missed its heartbeats" in replies[2].error.reason
    )


def test_a_node_with_its_own_data_path_trains_and_evaluates_on_it(imdb_dir, tmp_path):
    own = tmp_path / "node-data"
    own.mkdir()
    make_reviews(50, 7).to_parquet(own / "mine.parquet")
    cfg = make_cfg(
        f"data.path={imdb_dir}",
        "num_clients=3",
        "data.train_size=300",
        "data.test_size=100",
        f"data.cache_dir={tmp_path / 'node-cache'}",
    )  # nothing prepared here: the node's own cache only
    context = Context(
        run_id=1,
        node_id=5,
        state=RecordDict(),
        run_config=flatten(cfg),
        node_config={"partition-id": 1, "num-partitions": 3, "data-path": str(own)},
    )
    client = client_fn(context)
    assert (client.trainloader.num_examples, client.valloader.num_examples) == (40, 10)
    weights = [p.detach().numpy().copy() for p in client.model.parameters()]
    _, num_examples, metrics = client.fit(weights, {"server-round": 1})
    assert num_examples == 40 and np.isfinite(metrics["train-loss"])
    context.node_config.pop("data-path")
    with pytest.raises(FileNotFoundError, match="no prepared data for this run on this node"):
        client_fn(context)


@pytest.fixture
def no_federation_left():
    assert federation_processes() == [], "a federation's processes were running before the test"
    yield
    deadline = time.monotonic() + 15
    while federation_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert federation_processes() == [], "processes of the federation outlived it"


@pytest.mark.slow
def test_deployment_stopped_mid_round_then_resumed_with_a_supernode_killed_equals_the_simulation(
    small_run, imdb_dir, tmp_path, no_federation_left
):
    """TLS and node authentication on, 3 SuperNodes, 2 rounds, against main.py's simulation of the same config
    and seed (`small_run`). Ctrl-C lands while round 2 trains (a gate holds its clients); the same run resumed
    from its round-1 checkpoint then gives the simulation's numbers exactly: the clients compute the same thing
    from the same seeds in other processes, and the server aggregates in partition order. In the resumed run a
    SuperNode is killed (-9) while round 2 trains: the local federation starts it again and the server sends it
    its client's message again once the SuperLink counts it back. Both invocations run with the venv off PATH
    (as cron or a job script would), so every process finds Flower's console scripts beside the interpreter."""
    deployed, gate = tmp_path / "deployed", tmp_path / "gate"
    off_path = {"PATH": "/usr/bin:/bin"}
    # round 1's 3 clients pass; round 2's are held
    process = gated([f"hydra.run.dir={deployed}", f"data.path={imdb_dir}", *SMALL, "runtime=deployment", ADAM_GATE],
                    gate, 3, **off_path)  # fmt: skip
    try:
        os.kill(process.pid, signal.SIGINT)
        out, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    (gate / "open").touch()
    assert process.returncode == 130, out[-3000:]
    assert terminal_warnings(out) == [] and out.endswith(
        f"interrupted by SIGINT; resume with: python main.py resume={deployed}\n"
    ), out[-3000:]
    assert "round   1/2" in out and "Starting logstream" not in out  # Flower's own log lines stay in its logs
    info = json.loads((deployed / "run.json").read_text())
    assert info["status"] == "interrupted" and info["rounds_completed"] == 1 and info["runtime"] == "deployment"
    superlink = (deployed / "logs" / "superlink.log").read_text()
    assert "Uvicorn running on https://" in superlink  # TLS
    assert superlink.count("Created node_id=") == 3  # node authentication: every node's key registered first
    pids = json.loads((deployed / "logs" / "processes.json").read_text())
    nodes = {"supernode_0", "supernode_1", "supernode_2"}
    each = {f"{node}_{part}" for node in nodes for part in ("worker", "superexec")}  # a warm worker and SuperExec each
    assert set(pids) == {"superlink", "superlink_superexec", "flwr run", *nodes, *each}
    assert not any(alive(pid) for pid in pids.values())

    again = tmp_path / "gate-again"  # every client of the resumed run waits
    resumed = gated([f"resume={deployed}"], again, 0, **off_path)
    supernode = json.loads((deployed / "logs" / "processes.json").read_text())["supernode_0"]
    os.killpg(supernode, signal.SIGKILL)
    out = finished(resumed, again)
    assert resumed.returncode == 0, out[-3000:]
    assert "round   2/2" in out and "done: final central_accuracy" in out
    (line,) = terminal_warnings(out)
    assert line.startswith(f"warning: supernode_0 (pid {supernode}) died; started again (restart 1 of "), out
    info = json.loads((deployed / "run.json").read_text())
    assert info["status"] == "completed" and info["resumed"][0]["from_round"] == 1
    clients = pd.read_csv(deployed / "clients.csv")
    assert clients.loc[clients["retries"] > 0, ["round", "client_id"]].values.tolist() == [[2, 0]]
    for name in ("rounds.csv", "clients.csv", "layers.csv"):
        a, b = (pd.read_csv(d / name) for d in (deployed, small_run))
        # all but timings, memory, retries and the node (a Ray node id in simulation, a host here)
        columns = [c for c in a.columns if not c.endswith(("_time_s", "_mb")) and c not in ("node", *RETRY_COLUMNS)]
        pd.testing.assert_frame_equal(a[columns], b[columns], check_exact=True, obj=name)
    manifest = [pd.read_csv(d / "weights" / "manifest.csv") for d in (deployed, small_run)]
    pd.testing.assert_frame_equal(*manifest)


@pytest.mark.slow
def test_a_supernode_lost_in_round_2_is_recorded_and_the_run_goes_on(imdb_dir, tmp_path, no_federation_left):
    """Lost for good: not started again (runtime.max_restarts=0), so its message fails at the reply deadline."""
    run_dir = tmp_path / "run"
    process = start_main(
        run_dir,
        f"data.path={imdb_dir}",
        "num_clients=2",
        "num_rounds=2",
        "data.train_size=400",
        "data.test_size=100",
        "scrutiny=false",
        "strategy.fraction_evaluate=0",
        "runtime=deployment",
        "runtime.max_restarts=0",
        "runtime.reply_timeout_s=10",
    )
    try:
        wait_for_round(process, 1)
        victim = json.loads((run_dir / "logs" / "processes.json").read_text())["supernode_1"]
        # SIGTERM: the node signs off and the SuperLink counts it offline at once. After kill -9 it takes two
        # missed heartbeats (20 s, fedsim.runtimes.supernode) to notice; that case gives the same rows.
        os.killpg(victim, signal.SIGTERM)
        out, _ = process.communicate(timeout=400)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, out[-3000:]
    assert "done (degraded: 1 client calls failed" in out
    clients = pd.read_csv(run_dir / "clients.csv")
    lost = clients[(clients["round"] == 2) & (clients["client_id"] == 1)]
    assert list(lost["status"]) == ["failed"]  # its training call (no federated evaluation: fewer ClientApp processes)
    # Said by the SuperLink ("Node Unavailable ... failed to report a heartbeat") or, if the server looks first, by it.
    assert all("heartbeat" in error for error in lost["error"]), list(lost["error"])
    assert list(clients[(clients["round"] == 2) & (clients["status"] == "ok")]["client_id"]) == [0]
    rounds = pd.read_csv(run_dir / "rounds.csv")
    assert list(rounds["num_fit_clients"]) == [0, 2, 1] and list(rounds["num_failures"]) == [0, 0, 1]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "degraded"


@pytest.mark.slow
def test_supernodes_with_an_untrusted_ca_or_an_unregistered_key_are_refused(tmp_path, no_federation_left):
    other_ca = tmp_path / "other"
    make_all(other_ca)
    federation = LocalFederation(1, tmp_path / "logs", startup_timeout_s=60)
    with federation:
        certs = federation.work / "certs"
        wrong_ca = federation.start_supernode(0, other_ca / "ca.crt", certs / "node_0", name="wrong_ca")
        make_node_key(tmp_path, "stranger")  # a key the SuperLink was never told of
        unregistered = federation.start_supernode(0, certs / "ca.crt", tmp_path / "stranger", name="unregistered")
        for node, hint, says in (
            (wrong_ca, "does not trust the SuperLink's certificate", "CERTIFICATE_VERIFY_FAILED"),
            (unregistered, "does not know the node's public key", "Failed to activate SuperNode"),
        ):
            with pytest.raises(RunFailed, match=rf"^{node.name} was refused: .*{hint}.*{says}"):
                wait_joined([node], federation.startup_timeout_s)
            assert says in node.log.read_text()


def test_flwr_run_is_handed_a_copy_of_the_app_that_builds_the_same_fab(tmp_path):
    """What `flwr run` walks holds only what the FAB draws on, and Flower builds the same FAB from it, byte for
    byte, as from the checkout (its virtual environment and run outputs included)."""
    staged = staged_app(ROOT, tmp_path / "app")
    assert sorted(p.name for p in staged.iterdir()) == [".gitignore", "conf", "fedsim", "pyproject.toml"]
    assert build_fab_from_disk(staged) == build_fab_from_disk(ROOT)


@pytest.mark.parametrize("include", [None, '["**/*.py"]', '["src/*.py"]'])
def test_an_app_whose_patterns_name_no_folders_of_it_is_handed_over_whole(tmp_path, include):
    (tmp_path / "pyproject.toml").write_text(
        "[tool.flwr.app]\npublisher = 'x'\n" + (f"fab-include = {include}\n" if include else "")
    )
    assert staged_app(tmp_path, tmp_path / "staged") == tmp_path and not (tmp_path / "staged").exists()


def test_the_federation_turns_flowers_usage_events_off_unless_the_environment_turns_them_on(tmp_path, monkeypatch):
    monkeypatch.delenv("FLWR_TELEMETRY_ENABLED", raising=False)
    assert federation_env(tmp_path, tmp_path)["FLWR_TELEMETRY_ENABLED"] == "0"
    monkeypatch.setenv("FLWR_TELEMETRY_ENABLED", "1")
    assert federation_env(tmp_path, tmp_path)["FLWR_TELEMETRY_ENABLED"] == "1"

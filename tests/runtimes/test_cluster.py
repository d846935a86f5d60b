"""Runs and collections on a Ray cluster: a real two-node cluster on this machine (ray.cluster_utils), the data
shipped to a node without it, the actor cap, the tether, and the checks that need no cluster."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers.configs import SMALL, make_cfg
from helpers.processes import mentioning, ours
from helpers.runs import ROOT, run_main

from fedsim.collections.ledger import Collection
from fedsim.collections.plan import Planned
from fedsim.collections.ray_jobs import share
from fedsim.collections.scheduler import run_collection
from fedsim.config.settings import SimulationSettings
from fedsim.config.validate import validate
from fedsim.runtimes.cluster import (
    NodeResources,
    actor_pool_limit,
    check_fits,
)
from fedsim.system.errors import ConfigError
from fedsim.system.files import write_json
from fedsim.system.processes import started_at
from fedsim.system.waits import TimedOut

RUN = ["num_clients=4", "num_rounds=2", "data.train_size=1500", "data.test_size=500", "scrutiny=false"]
CLIENT_COLUMNS = ["round", "client_id", "num_examples", "train_loss", "is_malicious", "status"]
RAY_PROCESSES = ("raylet", "gcs_server", "dashboard", "ray::", "default_worker.py", "runtime_env/agent")


# --- without a cluster -----------------------------------------------------------------------------------------


def test_client_slots_follow_flowers_per_node_rule_and_a_client_that_fits_nowhere_is_refused():
    nodes = [NodeResources(cpus=3, gpus=0), NodeResources(cpus=4, gpus=1)]
    assert check_fits(nodes, 2, 0, "here") == 1 + 2  # per node: 3 CPUs hold one 2-CPU client, not 1.5
    assert check_fits(nodes, 1, 0.5, "here") == 2  # only the GPU node, 2 halves
    with pytest.raises(ConfigError, match=r"^resources\.num_cpus: 5 per client, .* allowed: at most 4$"):
        check_fits(nodes, 5, 0, "the Ray cluster at h:1")
    with pytest.raises(ConfigError, match=r"^resources\.num_gpus: 2 per client, .* allowed: at most 1$"):
        check_fits(nodes, 1, 2, "the Ray cluster at h:1")


def test_ray_keys_are_checked_and_an_attached_run_leaves_resources_to_the_cluster():
    with pytest.raises(ConfigError, match=r"^ray\.address: got 'nohost'; allowed: null"):
        validate(make_cfg("ray.address=nohost"))
    with pytest.raises(ConfigError, match=r"^ray\.max_actors: got 0; allowed"):
        validate(make_cfg("ray.max_actors=0"))
    with pytest.raises(ConfigError, match=r"^ray\.address: .*runtime=deployment"):
        validate(make_cfg("ray.address=auto", "runtime=deployment"))
    with pytest.raises(ConfigError, match=r"^resources\.num_cpus: 512 per client, but this machine"):
        validate(make_cfg("resources.num_cpus=512"))
    validate(make_cfg("resources.num_cpus=512", "ray.address=head:6379"))  # the cluster's nodes decide


def test_a_run_holds_as_many_actors_as_a_round_sends_messages():
    assert SimulationSettings.of(make_cfg("num_clients=10")).max_actors == 10
    assert (
        SimulationSettings.of(
            make_cfg("num_clients=100", "strategy.fraction_train=0.05", "strategy.fraction_evaluate=0.1")
        ).max_actors
        == 10
    )
    assert SimulationSettings.of(make_cfg("num_clients=10", "ray.max_actors=3")).max_actors == 3


def test_flowers_actor_pool_is_capped_for_the_run_and_restored(monkeypatch):
    from flwr.simulation.ray_transport import ray_actor

    monkeypatch.setattr(ray_actor, "pool_size_from_resources", lambda resources: 8)  # a cluster of 8 slots

    def capacity() -> int:
        return ray_actor.BasicActorPool(ray_actor.ClientAppActor, {"num_cpus": 1, "num_gpus": 0}, {}).actors_capacity

    with actor_pool_limit(3):
        assert capacity() == 3
    with actor_pool_limit(20):
        assert capacity() == 8
    assert capacity() == 8


def test_concurrent_runs_share_the_clusters_slots():
    assert share(slots=8, per_run=4, jobs=None) == (2, 4)
    assert share(slots=2, per_run=4, jobs=None) == (1, 2)
    assert share(slots=8, per_run=4, jobs=8) == (8, 1)
    assert share(slots=9, per_run=2, jobs=3) == (3, 2)


def _sleeper() -> subprocess.Popen:
    """A process that SIGINT stops, even where this one was started with SIGINT ignored (a background job);
    returned once its handler is in place."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGINT, "
            "signal.default_int_handler); print('ready', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def test_tether_stops_the_run_when_the_collector_dies(tmp_path):
    collector = _sleeper()
    tag = f"{collector.pid}:{started_at(collector.pid)!r}"
    marker = tmp_path / "stopped"
    run = (
        "import signal, sys, time, pathlib\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(marker)!r}).write_text('x'), sys.exit(143)))\n"
        "print('started', flush=True)\ntime.sleep(120)"
    )
    tether = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedsim.collections.watchdog",
            tag,
            str(tmp_path),
            str(tmp_path / "log"),
            "--",
            sys.executable,
            "-c",
            run,
        ],
        cwd=ROOT,
    )
    deadline = time.time() + 30
    while "started" not in ((tmp_path / "log").read_text() if (tmp_path / "log").exists() else ""):
        assert time.time() < deadline and tether.poll() is None
        time.sleep(0.1)
    assert tether.poll() is None  # the collector lives: the run goes on
    collector.kill()
    collector.wait()
    assert tether.wait(timeout=10) == 143 and marker.exists()

    gone = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedsim.collections.watchdog",
            tag,
            str(tmp_path),
            str(tmp_path / "log2"),
            "--",
            sys.executable,
            "-c",
            "print('ran')",
        ],
        cwd=ROOT,
        timeout=30,
    )
    assert gone.returncode == 143 and not (tmp_path / "log2").exists()  # a dead collector's run never starts


def test_a_run_that_finished_as_its_collector_was_killed_is_recorded_not_rerun(tmp_path):
    class NoRuns:
        overrides: tuple[str, ...] = ()

        def run(self, command, log_path, run_dir):
            raise AssertionError(f"ran {command}")

        def stop(self):
            pass

        def close(self):
            pass

    collection = Collection(tmp_path / "c")
    planned = [Planned(("num_rounds=1",), 0)]
    collection.record(0, {"seed": 0, "overrides": "num_rounds=1", "status": "running", "config": "num_rounds=1"})
    collection.run_dir(0).mkdir(parents=True)
    write_json(collection.run_dir(0) / "run.json", {"status": "completed", "final_central_accuracy": 0.75})
    try:
        assert run_collection(collection, ROOT / "main.py", planned, launcher=NoRuns(), echo=lambda _: None) == 0
    finally:
        collection.close()
    row = pd.read_csv(tmp_path / "c" / "runs.csv").iloc[0]
    assert row.status == "completed" and row.final_central_accuracy == 0.75


def test_stopping_a_cluster_collection_interrupts_its_runs_here_and_stops_unstarted_jobs(tmp_path):
    """Ctrl-C on the collector: a started run's main.py (on this machine) gets SIGINT, as a local run does; a job
    whose run has not written its run.json yet is stopped through Ray's Jobs API."""
    from fedsim.collections.ray_jobs import RayJobs

    class Client:
        stopped: list[str] = []

        def stop_job(self, submission_id: str) -> None:
            self.stopped.append(submission_id)

    run = _sleeper()
    started, waiting = tmp_path / "run_0000", tmp_path / "run_0001"
    started.mkdir()
    write_json(
        started / "run.json",
        {"status": "running", "host": socket.gethostname(), "pid": run.pid, "heartbeat_at": time.time()},
    )
    jobs = RayJobs.__new__(RayJobs)  # its cluster connection stood in for by Client
    jobs.client, jobs._running, jobs._lock = Client(), {"a": started, "b": waiting}, threading.Lock()
    jobs.stop()
    assert run.wait(timeout=10) == -signal.SIGINT and jobs.client.stopped == ["b"]


class JobsOf:
    """Ray's Jobs API as a resumed collection sees it: `states` of each job, read one per listing (the last
    ever after); job `other` belongs to another collection."""

    def __init__(self, states: dict[str, list[str]]) -> None:
        self.states, self.listings, self.stopped = states, 0, []

    def status(self, submission_id: str) -> str:
        states = self.states[submission_id]
        return states[min(self.listings, len(states)) - 1]

    def list_jobs(self):

        from ray.job_submission import JobStatus

        self.listings += 1
        return [
            SimpleNamespace(
                submission_id=sid,
                status=JobStatus(self.status(sid)),
                metadata={"fedsim_collection": "/c" if sid != "other" else "/elsewhere"},
            )
            for sid in self.states
        ]

    def stop_job(self, submission_id: str) -> None:
        self.stopped.append(submission_id)


def test_a_resumed_cluster_collection_waits_out_an_earlier_invocations_jobs_then_stops_what_is_left(monkeypatch):
    """Jobs of this collection still PENDING or RUNNING: awaited LEFTOVER_WAIT_S; what still runs then is stopped."""
    import fedsim.collections.ray_jobs
    from fedsim.collections.ray_jobs import RayJobs

    monkeypatch.setattr(fedsim.collections.ray_jobs, "POLL_S", 0)
    jobs = RayJobs.__new__(RayJobs)
    jobs.collection = "/c"
    jobs.client = JobsOf({"a": ["RUNNING", "RUNNING", "STOPPED"], "b": ["PENDING", "SUCCEEDED"], "other": ["RUNNING"]})
    jobs.stop_leftovers()
    assert jobs.client.stopped == [] and jobs.client.listings == 4  # 3 until none ran, 1 to stop what was left

    monkeypatch.setattr(fedsim.collections.ray_jobs, "LEFTOVER_WAIT_S", 0)
    jobs.client = JobsOf({"a": ["RUNNING"], "b": ["SUCCEEDED"], "other": ["RUNNING"]})
    jobs.stop_leftovers()
    assert jobs.client.stopped == ["a"] and jobs.client.listings == 2  # asked once at the deadline, not waited for


def test_a_cluster_run_is_awaited_until_its_job_ends_and_gives_its_exit_status(monkeypatch, tmp_path):
    import fedsim.collections.ray_jobs
    from fedsim.collections.ray_jobs import RayJobs

    class Client:
        def __init__(self, states: list[str], code: int | None, agentless: int = 0) -> None:
            self.states, self.code, self.reads, self.agentless = states, code, 0, agentless

        def submit_job(self, **job) -> str:
            if self.agentless:  # Ray's dashboard while no node's job agent has registered yet
                self.agentless -= 1
                raise RuntimeError("Request failed with status code 500: No available agent to submit job, please try")
            return job["submission_id"]

        def get_job_info(self, submission_id: str):

            from ray.job_submission import JobStatus

            self.reads += 1
            status = JobStatus(self.states[min(self.reads, len(self.states)) - 1])
            return SimpleNamespace(status=status, driver_exit_code=self.code if status.is_terminal() else None)

        def get_job_logs(self, submission_id: str) -> str:
            return "no entrypoint\n"

    monkeypatch.setattr(fedsim.collections.ray_jobs, "POLL_S", 0)
    jobs = RayJobs.__new__(RayJobs)
    jobs.collection, jobs.ip, jobs._running, jobs._lock = "/c", "127.0.0.1", {}, threading.Lock()
    jobs.client = Client(["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"], 0)
    log = tmp_path / "run.log"
    log.write_text("")
    assert jobs.run(["main.py"], log, tmp_path / "run_0000") == 0 and jobs.client.reads == 4 and jobs._running == {}
    jobs.client = Client(["PENDING", "FAILED"], 3)
    assert jobs.run(["main.py"], log, tmp_path / "run_0001") == 3
    jobs.client = Client(["PENDING", "STOPPED"], None)  # stopped before its entrypoint ran: Ray's log is kept
    assert jobs.run(["main.py"], tmp_path / "never.log", tmp_path / "run_0002") == -signal.SIGTERM
    assert (tmp_path / "never.log").read_text() == "no entrypoint\n"
    jobs.client = Client(["SUCCEEDED"], 0, agentless=2)  # submitted once an agent takes it
    assert jobs.run(["main.py"], log, tmp_path / "run_0003") == 0 and jobs.client.agentless == 0
    monkeypatch.setattr(fedsim.collections.ray_jobs, "AGENT_WAIT_S", 0)
    jobs.client = Client(["SUCCEEDED"], 0, agentless=5)
    with pytest.raises(TimedOut, match="a Ray job agent to take the run .*AGENT_WAIT_S sets how long"):
        jobs.run(["main.py"], log, tmp_path / "run_0004")


# --- a real two-node cluster ------------------------------------------------------------------------------------


def _ray_processes() -> set[int]:
    return {p.pid for p in ours(lambda p: any(name in " ".join(p.cmdline()) for name in RAY_PROCESSES))}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node of 1 CPU each, with the dashboard (Jobs API); no Ray process left afterwards."""
    from ray.cluster_utils import Cluster

    before = _ray_processes()
    port = _free_port()
    ray_cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": port,
        },
    )
    try:
        ray_cluster.add_node(num_cpus=1)
        ray_cluster.wait_for_nodes()
        yield ray_cluster.address, f"http://127.0.0.1:{port}"
    finally:
        ray_cluster.shutdown()
        deadline = time.time() + 30
        while (left := _ray_processes() - before) and time.time() < deadline:
            time.sleep(0.5)
        assert not left, f"Ray processes left after teardown: {sorted(left)}"


@pytest.mark.slow
def test_a_run_on_two_nodes_uses_both_and_equals_the_same_run_on_a_private_instance(
    cluster, imdb_dir, small_run, tmp_path
):
    """The session's reference run (`small_run`, a private Ray instance) again, attached to the cluster."""
    address, _ = cluster
    attached = run_main(tmp_path / "cluster", f"data.path={imdb_dir}", f"ray.address={address}", *SMALL)
    assert attached.returncode == 0, attached.stderr[-3000:]

    clients = pd.read_csv(tmp_path / "cluster" / "clients.csv")
    assert clients.node.nunique() == 2 and clients.node.notna().all()  # each node's id: both served clients
    reference = pd.read_csv(small_run / "clients.csv")
    assert reference.node.nunique() == 1
    pd.testing.assert_frame_equal(clients[CLIENT_COLUMNS], reference[CLIENT_COLUMNS])
    metrics = ["central_loss", "central_accuracy", "fed_loss", "fed_accuracy", "train_loss", "num_fit_clients"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "cluster" / "rounds.csv")[metrics], pd.read_csv(small_run / "rounds.csv")[metrics]
    )


@pytest.mark.slow
def test_clients_larger_than_any_node_are_refused_in_one_line_without_hanging(cluster, imdb_dir, tmp_path):
    address, _ = cluster
    result = run_main(
        tmp_path / "big", f"data.path={imdb_dir}", f"ray.address={address}", "resources.num_cpus=2", *RUN
    )  # run_main's own timeout fails a run that hangs
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: resources.num_cpus: 2 per client, but no node of the Ray cluster at {address} has that many "
        "(2 nodes, 2 CPUs and 0 GPUs in all; the largest has 1 CPUs and 0 GPUs), so Ray would wait forever to "
        "place a client; allowed: at most 1"
    ]


@pytest.mark.slow
def test_a_node_without_the_data_gets_it_from_the_object_store(cluster, tmp_path):
    """The shipped files reach a process on the other node, written where the driver had them, bit for bit."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from fedsim.runtimes.shipping import ship

    files = [tmp_path / "cache" / "train.safetensors", tmp_path / "cache" / "prepared.json"]
    files[0].parent.mkdir()
    files[0].write_bytes(os.urandom(3_000_000))
    files[1].write_text('{"train_file": "train.safetensors"}')
    digests = [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    ray.init(address=cluster[0], runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        shipment = ship(files)
        for file in files:
            file.unlink()  # as on a node that shares no filesystem with the driver
        here = ray.get_runtime_context().get_node_id()
        other = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != here)

        @ray.remote(num_cpus=1)
        def deliver() -> tuple[str, list[str]]:
            shipment.deliver()
            return (
                ray.get_runtime_context().get_node_id(),
                [hashlib.sha256(Path(f.path).read_bytes()).hexdigest() for f in shipment.files],
            )

        node, delivered = ray.get(
            deliver.options(scheduling_strategy=NodeAffinitySchedulingStrategy(other, soft=False)).remote()
        )
    finally:
        ray.shutdown()
    assert node == other and delivered == digests


def _collect(root: Path, dashboard: str, imdb_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "run_and_collect.py",
            "--root",
            str(root),
            "--address",
            dashboard,
            "--jobs",
            "2",
            "--name",
            "c",
            "--seeds",
            "0",
            "1",
            "--",
            f"data.path={imdb_dir}",
            *[o for o in RUN if not o.startswith("num_rounds")],
            "num_rounds=1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_a_collection_on_the_cluster_survives_kill_9_of_its_collector(cluster, imdb_dir, tmp_path):
    """2 seeds as Ray jobs at once; the collector killed with -9 after its first completed run, the other cut
    off, then the same command: every run exactly once, every file, unique run ids. (Jobs not yet started
    are covered by the Ctrl-C test above.)"""
    _, dashboard = cluster
    collector = _collect(tmp_path, dashboard, imdb_dir)
    ledger = tmp_path / "c" / "runs.csv"
    deadline = time.time() + 600
    while not (ledger.exists() and (pd.read_csv(ledger).status == "completed").any()):
        assert time.time() < deadline and collector.poll() is None, collector.stdout.read()[-3000:]
        time.sleep(0.5)
    os.kill(collector.pid, signal.SIGKILL)
    collector.wait()
    assert (pd.read_csv(ledger).status == "completed").sum() >= 1
    deadline = time.time() + 30  # its jobs stop with it: no process of the collection is left
    while (left := mentioning(str(tmp_path))) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, left

    output, _ = _collect(tmp_path, dashboard, imdb_dir).communicate(timeout=600)
    assert "2 runs planned" in output and "0 failed" in output, output[-3000:]
    runs = pd.read_csv(ledger)
    assert sorted(runs.run_id) == [0, 1] and (runs.status == "completed").all()
    assert not runs.duplicated(["config", "seed"]).any() and len(runs) == 2
    for run_id in runs.run_id:
        run_dir = tmp_path / "c" / "runs" / f"run_{run_id:04d}"
        assert all((run_dir / name).exists() for name in ("run.json", "config.yaml", "rounds.csv", "clients.csv"))
        assert "  address: auto\n" in (run_dir / "config.yaml").read_text()  # attached to the cluster
    rounds = pd.read_csv(tmp_path / "c" / "rounds.csv")
    assert len(rounds) == 2 * 2 and not rounds.duplicated(["run_id", "round"]).any()
    clients = pd.read_csv(tmp_path / "c" / "clients.csv")
    assert clients.node.notna().all() and set(clients.run_id) == {0, 1}
    assert (tmp_path / "c" / "summary.csv").exists() and (tmp_path / "c" / "accuracy.png").exists()
    assert not mentioning(str(tmp_path))


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

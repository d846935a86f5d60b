"""A collection on a Ray cluster (`run_and_collect.py --address URL`): each run a Ray job, through Ray's Jobs API.

Each job's driver (main.py: aggregation, central evaluation, the run's files) runs on the collector's own
machine, pinned there by Ray's `node:IP` resource, and its clients spread over the cluster. So outputs land
in the collection directory as they do locally, and the ledger, resume and kill -9 guarantees are the local
ones: the watchdog (fedsim.collections.watchdog) stops a run whose collector died, and a resumed collection first waits
out any job of the collection an earlier invocation left running.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util import get_node_ip_address
from ray.util.state import list_nodes

from fedsim.collections.plan import CollectionError, Planned, composed
from fedsim.collections.watchdog import tag
from fedsim.config.compose import compose
from fedsim.config.settings import SimulationSettings
from fedsim.rundir import effective_status, read_info
from fedsim.runtimes.cluster import NodeResources, check_fits
from fedsim.system.errors import ConfigError
from fedsim.system.processes import child_env
from fedsim.system.waits import wait_for, wait_until

if TYPE_CHECKING:
    from ray.job_submission import JobDetails

POLL_S = 0.5


AGENT_WAIT_S = 120.0  # how long a run waits for the cluster's dashboard to have a job agent (a node starting)
NO_AGENT = "No available agent to submit job"  # Ray's answer then (HTTP 500, "please try again later")
LEFTOVER_WAIT_S = 120.0  # how long a resumed collection waits for an earlier invocation's jobs to stop


ROOT = Path(__file__).resolve().parents[2]  # the project: main.py and the fedsim package


ENV_KEPT = ("RAY_",)  # prefixes of variables a job gets from Ray, not from the collector


class RayJobs:
    """Runs main.py as Ray jobs on the cluster whose dashboard is at `address`, as `--jobs` runs at once."""

    def __init__(self, address: str, collection: Path) -> None:
        try:
            self.client = JobSubmissionClient(address)
        except (ConnectionError, ValueError) as exc:
            raise CollectionError(
                f"--address: no Ray dashboard at {address!r} ({str(exc).splitlines()[0]}); "
                "allowed: the cluster's dashboard URL, e.g. http://HEAD:8265"
            ) from None
        self.address, self.collection = address, str(collection)
        self.ip = get_node_ip_address()
        self.nodes = self._nodes()
        self.overrides: tuple[str, ...] = ()
        self._running: dict[str, Path] = {}
        self._lock = threading.Lock()

    def _nodes(self) -> list[NodeResources]:
        """The cluster's alive nodes; CollectionError unless this machine is one of them (the runs' drivers
        and their files stay here)."""
        alive = [n for n in list_nodes(address=self.address, detail=True) if n.state == "ALIVE"]
        if not any(n.node_ip == self.ip for n in alive):
            raise CollectionError(
                f"--address: this machine ({self.ip}) is no node of the cluster at {self.address} "
                f"(nodes: {', '.join(sorted({n.node_ip for n in alive}))}); allowed: run "
                "run_and_collect.py on one of its nodes, e.g. the head"
            )
        return [
            NodeResources(float(n.resources_total.get("CPU", 0)), float(n.resources_total.get("GPU", 0))) for n in alive
        ]

    def plan(self, planned: Sequence[Planned], jobs: int | None) -> int:
        """How many runs go at once (`jobs`, or as many as the cluster fits), each capped at its share of the
        cluster's client slots (`ray.max_actors`) so that concurrent runs never wait on each other's actors."""
        configs = list(filter(None, (composed(run) for run in planned))) or [compose([])]
        num_cpus = max(float(c.resources.num_cpus) for c in configs)
        num_gpus = max(float(c.resources.num_gpus) for c in configs)
        try:
            slots = check_fits(self.nodes, num_cpus, num_gpus, f"the Ray cluster at {self.address}")
        except ConfigError as exc:
            raise CollectionError(str(exc)) from None
        if jobs is not None and jobs > slots:
            raise CollectionError(
                f"--jobs: {jobs} runs at once need a client slot each, and the cluster at "
                f"{self.address} has {slots} for {num_cpus:g} CPUs and {num_gpus:g} GPUs per "
                f"client; allowed: at most {slots}"
            )
        jobs, actors = share(slots, max(SimulationSettings.of(c).max_actors for c in configs), jobs)
        self.overrides = ("ray.address=auto", f"ray.max_actors={actors}")
        return jobs

    def stop_leftovers(self) -> None:
        """Stop this collection's jobs that an earlier, killed invocation left running, and wait for their end."""

        def leftovers() -> list[str]:
            return [
                j.submission_id
                for j in self.client.list_jobs()
                if (j.metadata or {}).get("fedsim_collection") == self.collection
                and j.status in (JobStatus.PENDING, JobStatus.RUNNING)
            ]

        # Tethered to the dead collector, they are recording themselves interrupted; what still runs at the
        # deadline is stopped through Ray.
        wait_until(lambda: not leftovers(), timeout_s=LEFTOVER_WAIT_S, poll_s=POLL_S)
        for submission_id in leftovers():
            self.client.stop_job(submission_id)

    def run(self, command: list[str], log_path: Path, run_dir: Path) -> int:
        """Submit `command` as a job whose driver runs on this machine; wait for its end; its exit status."""
        entrypoint = shlex.join(
            [sys.executable, "-m", "fedsim.collections.watchdog", tag(), os.getcwd(), str(log_path), "--", *command]
        )
        env = child_env({k: v for k, v in os.environ.items() if not k.startswith(ENV_KEPT)})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        wanted = f"fedsim-{run_dir.name}-{uuid.uuid4().hex[:8]}"

        def submitted() -> str | None:
            try:
                return self.client.submit_job(
                    entrypoint=entrypoint,
                    submission_id=wanted,
                    metadata={"fedsim_collection": self.collection, "run_dir": str(run_dir)},
                    entrypoint_resources={f"node:{self.ip}": 0.001},
                    runtime_env={"env_vars": env},
                )
            except RuntimeError as exc:  # the dashboard has no job agent yet (a node still starting): Ray says retry
                if NO_AGENT not in str(exc):
                    raise
                return None

        submission_id = wait_for(
            submitted,
            timeout_s=AGENT_WAIT_S,
            poll_s=POLL_S,
            what="a Ray job agent to take the run",
            key="fedsim.collections.ray_jobs.AGENT_WAIT_S",
        )

        def ended() -> JobDetails | None:
            info = self.client.get_job_info(submission_id)
            return info if info.status.is_terminal() else None

        with self._lock:
            self._running[submission_id] = run_dir
        try:  # no deadline, as a local run's child.wait(): the run's own deadlines (startup, replies) end it
            info = wait_until(ended, timeout_s=math.inf, poll_s=POLL_S)
        finally:
            with self._lock:
                self._running.pop(submission_id, None)
        if not log_path.exists():  # the entrypoint never started: Ray's log of the job says why
            log_path.write_text(self.client.get_job_logs(submission_id))
        if info.driver_exit_code is None:  # stopped before its entrypoint ran, or the entrypoint could not start
            return -signal.SIGTERM if info.status == "STOPPED" else 1
        return int(info.driver_exit_code)

    def close(self) -> None:
        """Nothing outlives a run here: each is its own job."""

    def stop(self) -> None:
        """Ask every running run to stop as a local one is asked (SIGINT to its main.py, here on this machine);
        a job whose run has not started yet is stopped through Ray."""
        with self._lock:
            running = dict(self._running)
        for submission_id, run_dir in running.items():
            info = read_info(run_dir)
            if info and info.get("host") == socket.gethostname() and effective_status(info) == "running":
                os.kill(int(info["pid"]), signal.SIGINT)
            else:
                self.client.stop_job(submission_id)


def share(slots: int, per_run: int, jobs: int | None) -> tuple[int, int]:
    """(runs at once, client actors per run) on a cluster of `slots` client slots, for runs that use up to
    `per_run` actors: by default as many runs as fit whole; the actors of concurrent runs never exceed `slots`."""
    jobs = jobs or max(1, slots // per_run)
    return jobs, max(1, min(per_run, slots // jobs))

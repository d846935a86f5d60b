"""Shared fixtures: real IMDB from ../shared/imdb when present, else a small generated look-alike; an isolated
data cache; the session's reference run; and, at the end, no process any test started left behind.

What tests share besides fixtures lives in tests/helpers/: configs, ways to run fedsim, process lookups, gates.
"""

from __future__ import annotations

import gc
import os
import uuid
from pathlib import Path

import psutil
import pytest
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from helpers.configs import SMALL
from helpers.data import make_reviews
from helpers.patching import PicklingActors, kept_as_is
from helpers.processes import SESSION, ours
from helpers.runs import ROOT, run_main

SHARED_IMDB = ROOT.parent / "shared" / "imdb"


@pytest.fixture(autouse=True, scope="session")
def no_process_left():
    """After the whole suite, no process any test started is left (each test stops what it starts): Ray's raylet
    and workers, Flower's SuperLink, SuperNodes and apps, main.py; they all carry this session's mark."""
    os.environ[SESSION] = uuid.uuid4().hex
    yield
    mine = [p for p in ours(lambda p: True) if p.pid != os.getpid()]
    _, left = psutil.wait_procs(mine, timeout=30)
    names = []
    for process in left:
        try:
            names.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
            process.kill()
        except psutil.NoSuchProcess:
            continue
    assert not names, f"processes outlived the test suite: {names}"


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    os.environ["FEDSIM_CACHE"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return cache


@pytest.fixture
def without_full_collections(monkeypatch):
    """gc.collect() made a no-op for the test. Libraries call it where they free memory: statsmodels' Holm step on
    every call, Flower's ArrayRecord.to_numpy_ndarrays(keep_input=False) on every reply (its Krum, Bulyan). On a test
    process's heap (torch, Flower, every earlier test's objects) each costs most of a second; none changes a number."""
    monkeypatch.setattr(gc, "collect", lambda generation=2: 0)


@pytest.fixture
def task_identity(monkeypatch):
    """Flower's process-wide task identity, which Message() reads and pull_task_input sets; as it was after."""
    for name in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, TaskIdentity.__dict__[name])
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


@pytest.fixture(scope="session")
def generated_imdb(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imdb")
    make_reviews(1200, 0).to_parquet(root / "train.parquet")
    make_reviews(400, 1).to_parquet(root / "test.parquet")
    return root


@pytest.fixture(scope="session")
def imdb_dir(generated_imdb) -> Path:
    """The real IMDB copy where this checkout has one beside it, else the generated one."""
    return SHARED_IMDB if (SHARED_IMDB / "train.parquet").exists() else generated_imdb


@pytest.fixture(scope="session")
def small_run(imdb_dir, tmp_path_factory) -> Path:
    """`python main.py` (simulation) of SMALL, once per session: the reference other runs of it must equal."""
    run_dir = tmp_path_factory.mktemp("run")
    result = run_main(run_dir, f"data.path={imdb_dir}", *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("round ") >= 3 and "ETA" in result.stdout
    return run_dir


@pytest.fixture
def flower_pulls_kept(monkeypatch):
    """The three pulls short_pulls() wraps, Flower's own again after the test."""
    from flwr.superlink.grid import http_grid
    from flwr.supernode import start_client_internal
    from flwr.supernode.runtime import run_clientapp

    kept_as_is(monkeypatch, run_clientapp, "pull_and_inflate_object_from_tree")
    kept_as_is(monkeypatch, http_grid, "pull_objects")
    kept_as_is(monkeypatch, start_client_internal, "pull_objects")


@pytest.fixture
def ray_backend(monkeypatch):
    """Flower's RayBackend on no Ray: its pool's actors are PicklingActors, a cluster of 8 client slots."""
    import ray
    from flwr.server.superlink.fleet.vce.backend import raybackend
    from flwr.simulation.ray_transport import ray_actor

    actors = PicklingActors()
    monkeypatch.setattr(raybackend.RayBackend, "init_ray", lambda self, config: None)
    monkeypatch.setattr(raybackend, "ClientAppActor", actors)
    monkeypatch.setattr(ray_actor, "pool_size_from_resources", lambda resources: 8)  # what ray.nodes() would give
    monkeypatch.setattr(ray, "get", lambda future: future.result())
    backend = raybackend.RayBackend({"client_resources": {"num_cpus": 1.0, "num_gpus": 0.0}})
    return backend, actors

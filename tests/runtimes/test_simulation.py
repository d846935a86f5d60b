"""The simulation runtime (fedsim.runtimes.simulation): the Ray instance fedsim starts keeps fedsim's SIGTERM
handler and is the one Flower's backend uses; client slots from the CPUs a private node takes; Flower's queues
waited on through fedsim's short waits."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from helpers.configs import make_cfg

from fedsim.config.settings import SimulationSettings


def _sigterm_cfg(address: str | None) -> SimulationSettings:
    return SimulationSettings.of(make_cfg(f"ray.address={address or 'null'}", "resources.num_cpus=1"))


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
        assert local_client_slots(SimulationSettings.of(make_cfg(f"resources.num_cpus={num_cpus}"))) == slots


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

"""Ray and the client actors kept warm from one run to the next (fedsim.runtimes.warm): Flower's simulation
runtime still builds and ends its backend through the methods kept_warm replaces."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any


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

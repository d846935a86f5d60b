"""Ray and Flower's client actors kept warm from one run to the next, and to the end of a run's process.

A run on a private Ray instance pays for Ray's start and for its client actors' start (each actor imports
torch and fedsim) before its first round, and for Ray's shutdown after its last. Inside `kept_warm`, the
first simulation run starts them as usual and the next runs reuse them: Ray stays up, and Flower's
RayBackend hands each run the actor pool the first run built. The actors hold no run's state that the next
run can see: every cache in a client process is keyed by the run's settings or by a content-addressed
file (fedsim.client.client, fedsim.data), and every step reseeds from (seed, round, client).

Two kinds of process use it: a collection's runner (fedsim.cli.warm_runner), which makes run after run, and
main.py's own run, which keeps Ray to its end and then leaves, killing Ray's processes rather than waiting for
Ray's graceful shutdown (fedsim.cli.command). A run whose Ray settings differ from the warm ones (client
resources, the actor limit, Ray's init arguments) ends the warm instance and starts its own, which the runs
after it keep in turn. A run on a cluster (`ray.address`) never uses a warm instance. Flower 1.42 has no
setting to keep a backend, so the two RayBackend methods are replaced for each run inside `kept_warm`
(docs/reference/patches.md).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class _Warm:
    """The instance kept between runs: the Ray settings it was started with, and Flower's actor pool."""

    key: str | None = None
    pool: Any = None


_WARM: list[_Warm] = []  # set inside `kept_warm`


def kept() -> bool:
    """Whether this process is inside `kept_warm`."""
    return bool(_WARM)


def _end(warm: _Warm) -> None:
    """End the warm actors and Ray."""
    import ray  # Ray only once a simulation has started

    if warm.pool is not None:
        warm.pool.terminate_all_actors()
    warm.key, warm.pool = None, None
    ray.shutdown()


def cool() -> None:
    """End the warm instance now (after a run that did not complete: its actors may be broken); the next
    run starts its own."""
    if _WARM and (_WARM[0].key is not None or _WARM[0].pool is not None):
        _end(_WARM[0])


def forget() -> None:
    """The warm instance died (fedsim.runtimes.recovery): its actors are forgotten, not ended, and Ray is shut
    down; the next run starts its own."""
    import ray  # Ray only once a simulation has started

    if _WARM:
        _WARM[0].key, _WARM[0].pool = None, None
    ray.shutdown()


@contextlib.contextmanager
def kept_warm(end: bool = True) -> Iterator[None]:
    """For every run this process makes inside: Ray and the client actors kept from one run to the next, and
    ended on the way out; `end=False` for a process that leaves from inside, killing them
    (fedsim.system.signals.leave). Nothing is imported until a simulation starts."""
    warm = _Warm()
    _WARM[:] = [warm]
    try:
        yield
    finally:
        _WARM.clear()
        if end and (warm.key is not None or warm.pool is not None):
            _end(warm)


@contextlib.contextmanager
def _backend_kept(warm: _Warm) -> Iterator[None]:
    """For one run: Flower's RayBackend builds its pool only if `warm` has none, and ends neither it nor Ray."""
    from flwr.server.superlink.fleet.vce.backend import raybackend  # Flower's simulation, starting now

    backend_class = raybackend.RayBackend
    build, terminate = backend_class.build, backend_class.terminate

    def reuse_or_build(self: Any, app_fn: Callable[[], Any]) -> None:
        if warm.pool is None:
            build(self, app_fn)
            warm.pool = self.pool
        self.pool, self.app_fn = warm.pool, app_fn

    def keep(self: Any) -> None:
        """The run is over; its actors and Ray stay for the next."""

    backend_class.build, backend_class.terminate = reuse_or_build, keep
    try:
        yield
    finally:
        backend_class.build, backend_class.terminate = build, terminate


@contextlib.contextmanager
def ray_for(settings: dict | None) -> Iterator[None]:
    """Around one simulation: Ray shut down at its end, unless the run is inside `kept_warm` and `settings`
    (its backend's Ray settings; None: a cluster's, never kept) can be kept, when a warm instance with other
    settings is ended first."""
    import ray  # Ray only once a simulation starts, after the run's checks and data step

    key = None if settings is None else json.dumps(settings, sort_keys=True)
    warm = _WARM[0] if _WARM else None
    if warm is not None and warm.key != key and (warm.pool is not None or ray.is_initialized()):
        _end(warm)
    if warm is None or key is None:
        try:
            yield
        finally:  # Flower's backend has shut Ray down too, unless the run stopped before it was built
            ray.shutdown()
        return
    with _backend_kept(warm):
        yield
    warm.key = key  # only a run that ended well leaves its Ray and actors to the next

"""A dead client actor replaced and its work redone (fedsim.runtimes.recovery): Flower's simulation runtime still
processes each message through the method `retried` replaces."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict


def test_flowers_simulation_runtime_processes_each_message_through_the_method_retried_replaces(
    ray_backend, task_identity, monkeypatch, capsys
):
    """Patch `RayBackend.process_message` (fedsim.runtimes.recovery.retried, for each simulation). Guards Flower's
    `flwr.server.superlink.fleet.vce.vce_api.worker`, the thread that hands each message to the backend: it goes
    through `process_message`, whose replacement takes a dead actor out of the pool (`BasicActorPool.pool`,
    `_future_to_actor`, `create_actor_fn`, read here too), adds a new one, sends the message again and marks
    the reply; Flower's worker stores that reply."""
    import queue

    import ray
    from flwr.server.superlink.fleet.vce import vce_api
    from ray.exceptions import ActorDiedError

    from fedsim.messages.retries import RETRIES
    from fedsim.runtimes.cluster import actor_pool_limit
    from fedsim.runtimes.recovery import RayWatch, retried

    backend, actors = ray_backend
    with actor_pool_limit(2):
        backend.build(lambda: None)
    deaths = [ActorDiedError()]  # the first task's actor dies

    def get(future: Any) -> Any:
        if deaths:
            raise deaths.pop()
        return future.result()

    monkeypatch.setattr(ray, "get", get)
    monkeypatch.setattr(ray, "wait", lambda futures, timeout: (futures, []))
    watch = RayWatch()
    monkeypatch.setattr(watch, "lost", lambda: None)
    monkeypatch.setattr(watch, "node_dead", lambda: None)
    config = ConfigRecord({"server-round": 2})
    message = Message(RecordDict({"config": config}), dst_node_id=7, message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 4}, state=RecordDict(), run_config={})
    store = SimpleNamespace(retrieve_context=lambda run_id: context, update_context=lambda run_id, context: None)
    inbox, outbox, stop = queue.Queue(), queue.Queue(), threading.Event()
    inbox.put(message)
    metrics = SimpleNamespace(add_clientapp_runtime=lambda seconds: None)
    with retried(2, watch):
        worker = threading.Thread(target=vce_api.worker, args=(inbox, outbox, {7: store}, backend, stop, metrics))
        worker.start()
        reply = outbox.get(timeout=30)
        stop.set()
        worker.join(timeout=30)
    assert not reply.has_error() and dict(reply.content[RETRIES])["count"] == 1
    assert actors.made == 3 and len(backend.pool.pool) == 2  # the dead actor replaced, the pool's size kept
    assert capsys.readouterr().err.startswith("warning: round 2: the Ray worker died while training client 4;")

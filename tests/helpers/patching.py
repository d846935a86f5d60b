"""What the guards of fedsim's patches share (docs/reference/patches.md): stand-ins that record Flower's calls,
the installed source of one function read, a module's attributes kept as they were, Ray's actors faked."""

from __future__ import annotations

import ast
import contextlib
import inspect
import textwrap
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict


class Stop(Exception):
    """Ends a loop of Flower's once the test has seen what it came for."""


def kept_as_is(monkeypatch: pytest.MonkeyPatch, module: Any, *names: str) -> None:
    """The module's attributes as they are now, set back after the test, whatever fedsim installs over them."""
    for name in names:
        monkeypatch.setattr(module, name, getattr(module, name))


def recording(real: Any, calls: list[dict], result: Any) -> Any:
    """A stand-in for Flower's `real`: each call must fit `real`'s signature; its keywords are recorded; it returns
    `result(*args, **kwargs)` (or raises what that raises)."""

    def stand_in(*args: Any, **kwargs: Any) -> Any:
        inspect.signature(real).bind(*args, **kwargs)
        calls.append(kwargs)
        return result(*args, **kwargs)

    return stand_in


def function_tree(function: Any) -> ast.AST:
    return ast.parse(textwrap.dedent(inspect.getsource(function)))


def dotted_name(node: ast.AST) -> str:
    """`a.b.c` for a Name or an Attribute chain, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted_name(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def calls_to(function: Any, name: str) -> list[ast.Call]:
    """The calls in `function`'s source whose callee is spelled `name` (a bare name or a dotted one)."""
    return [n for n in ast.walk(function_tree(function)) if isinstance(n, ast.Call) and dotted_name(n.func) == name]


def binds_locally(function: Any, name: str) -> bool:
    """Whether `function` assigns or imports `name` itself, which would hide the module's global of that name."""
    for node in ast.walk(function_tree(function)):
        if isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store):
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
            (a.asname or a.name).split(".")[0] == name for a in node.names
        ):
            return True
    return False


def supernode_loop(flower: Any, monkeypatch: pytest.MonkeyPatch, isolation: str) -> Any:
    """Flower's `start_client_internal` with `isolation`, on stand-ins: its first poll brings no message."""
    monkeypatch.setattr(flower, "register_signal_handlers", lambda **kwargs: None)
    monkeypatch.setattr(flower, "_pull_and_store_message", lambda **kwargs: None)  # a poll that brought nothing

    @contextlib.contextmanager
    def connection(**kwargs):
        yield (7, None, None, None, None, None, None, None)  # the node id, then the connection's functions

    monkeypatch.setattr(flower, "_init_connection", connection)
    state = SimpleNamespace(set_node_id=lambda node_id: None)
    factory = SimpleNamespace(state=lambda: state, objectstore_factory=SimpleNamespace(store=lambda: None))

    def flower_supernode() -> None:
        flower.start_client_internal(
            state_factory=factory,
            server_address="127.0.0.1:9092",
            node_config={},
            insecure=True,
            isolation=isolation,
            runtime_api_address="127.0.0.1:9094",
            runtime_dependency_install=False,
        )

    return flower_supernode


class PicklingActors:
    """Flower's ClientAppActor class as its actor pool uses it (`.options(**resources).remote()`), making actors whose
    `run.remote(...)` pickles the message and context as Ray pickles a task's arguments (pickle protocol 5, buffers
    handed to a callback), and whose result `ray.get` unpickles."""

    def __init__(self) -> None:
        self.made = 0
        self.sent: list[tuple[bytes, list]] = []  # each task's pickle stream and its out-of-band buffers

    def options(self, **resources: Any) -> PicklingActors:
        return self

    def remote(self, **kwargs: Any) -> SimpleNamespace:
        self.made += 1
        return SimpleNamespace(run=SimpleNamespace(remote=self._run), terminate=SimpleNamespace(remote=lambda: None))

    def _run(self, app_fn: Any, message: Message, cid: str, context: Context) -> FakeFuture:
        import ray.cloudpickle

        buffers: list = []
        stream = ray.cloudpickle.dumps((message, context), protocol=5, buffer_callback=buffers.append)
        self.sent.append((stream, buffers))
        return FakeFuture(cid, stream, buffers)


class FakeFuture:
    def __init__(self, cid: str, stream: bytes, buffers: list) -> None:
        self.cid, self.stream, self.buffers = cid, stream, buffers

    def result(self) -> tuple[str, Message, Context]:
        import ray.cloudpickle

        message, context = ray.cloudpickle.loads(self.stream, buffers=self.buffers)
        return self.cid, message, context


def dp_reply(update: np.ndarray, metrics: dict) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(update)}), "metrics": MetricRecord(metrics)})
    return Message(content, dst_node_id=2, message_type=MessageType.TRAIN)

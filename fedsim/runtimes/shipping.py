"""The prepared data, carried to client processes on any node of a Ray cluster through Ray's object store.

A cluster's nodes need not share a filesystem with the driver, nor read IMDB or featurize it: the driver
puts the few cache files a client reads (fedsim.data.prepare.client_files) into the object store, and each client
process writes any it lacks to the same path before its first message. Nodes that share the driver's
cache find the files there and fetch nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from fedsim.data.cache import sha256_of
from fedsim.system.files import write_bytes


@dataclass(frozen=True)
class ShippedFile:
    path: str
    size: int
    sha256: str
    ref: Any  # ray.ObjectRef of the file's bytes, owned by the driver for the run


@dataclass(frozen=True)
class Shipment:
    files: tuple[ShippedFile, ...]

    def deliver(self) -> None:
        """Write each file this node lacks (or holds damaged), once per process."""
        import ray  # in a client actor, where Ray is loaded: the driver imports this module before Ray starts

        for file in self.files:
            if file.path in _DELIVERED:
                continue
            path = Path(file.path)
            if not (path.exists() and path.stat().st_size == file.size and sha256_of(path) == file.sha256):
                path.parent.mkdir(parents=True, exist_ok=True)
                write_bytes(path, ray.get(file.ref))
            _DELIVERED.add(file.path)

    def mod(self, message: Message, context: Context, call_next: ClientAppCallable) -> Message:
        """A Flower ClientApp mod: the files are in place before any handler reads them."""
        self.deliver()
        return call_next(message, context)


_DELIVERED: set[str] = set()  # paths this process has checked or written


def ship(paths: Iterable[Path]) -> Shipment:
    """Put the files into the object store of the cluster this process is connected to."""
    import ray  # Ray only once a simulation starts, after the run's checks and data step

    files = []
    for path in paths:
        content = Path(path).read_bytes()
        files.append(ShippedFile(str(path), len(content), sha256_of(Path(path)), ray.put(content)))
    return Shipment(tuple(files))

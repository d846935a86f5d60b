"""Ports: a free one on this machine, one line for a SuperLink port another process holds, and whether a
HOST:PORT answers."""

from __future__ import annotations

import socket

from fedsim.system.errors import ConfigError


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """One line for a SuperLink port that another process holds, before anything starts."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                "runtime.port",
                f"{host}:{port} is already in use ({exc.strerror}); allowed: a free "
                "port, or runtime.port=null to take any free one",
            ) from None


def knock(address: str, timeout_s: float) -> None:
    """Open and close a TCP connection to HOST:PORT (a Ray head's GCS); OSError if nothing answers in time."""
    host, port = address.rsplit(":", 1)
    socket.create_connection((host, int(port)), timeout=timeout_s).close()

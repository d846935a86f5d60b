"""The client side: `IMDBClient`, `client_fn(context)`, the ClientApp, and the attacks malicious clients run.

`IMDBClient` and `client_fn` load on first use (they bring torch): a deployment's ClientApp process, which
forwards its message to the node's warm worker (fedsim.client.worker), never needs them.
"""

from typing import Any

__all__ = ["IMDBClient", "client_fn"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from fedsim.client import client  # torch on first use: a ClientApp that forwards to its worker never loads it

        return getattr(client, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

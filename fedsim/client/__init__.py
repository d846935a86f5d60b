"""The client side: `IMDBClient`, `client_fn(context)`, the ClientApp, and the attacks malicious clients run."""

from fedsim.client.client import IMDBClient, client_fn

__all__ = ["IMDBClient", "client_fn"]

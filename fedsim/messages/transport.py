"""The precision client updates travel in (`transport`): float32, or float16/bfloat16 to halve what
Flower and Ray serialize per update. The server reads them as float32 (`VIEWS`) when it aggregates,
so only the clients' weights are rounded, never the sum. Changes the math: off by default, and
recorded in run.json.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.messages.records import ArrayView


def encode(weights: Sequence[np.ndarray], transport: str) -> list[np.ndarray]:
    """Float32 arrays in the transport's precision (bfloat16 as its raw 16 bits, uint16: NumPy has no
    bfloat16); every other array as it is."""
    if transport == "float32":
        return list(weights)
    if transport == "float16":
        return [w.astype(np.float16) if w.dtype == np.float32 else w for w in weights]
    import torch  # NumPy has no bfloat16; imported here: a ClientApp process that forwards to its worker loads no torch

    return [
        torch.from_numpy(np.ascontiguousarray(w)).to(torch.bfloat16).view(torch.uint16).numpy()
        if w.dtype == np.float32
        else w
        for w in weights
    ]


def to_float32(array: np.ndarray, transport: str) -> np.ndarray:
    """One array as `encode` sent it, back in float32 (exactly: float16 and bfloat16 are float32 subsets)."""
    if transport == "float16" and array.dtype == np.float16:
        return array.astype(np.float32)
    if transport == "bfloat16" and array.dtype == np.uint16:
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array


class Float16View(ArrayView):
    """A float16 update as it arrived, read as float32 by the strategy (no float32 copy kept)."""

    def numpy(self) -> np.ndarray:
        return to_float32(super().numpy(), "float16")


class BFloat16View(ArrayView):
    """A bfloat16 update as it arrived (uint16 bits), read as float32 by the strategy."""

    def numpy(self) -> np.ndarray:
        return to_float32(super().numpy(), "bfloat16")


VIEWS: dict[str, type[ArrayView]] = {"float32": ArrayView, "float16": Float16View, "bfloat16": BFloat16View}

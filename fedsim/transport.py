"""The precision client updates travel in (`transport`): float32, or float16/bfloat16 to halve what
Flower and Ray serialize per update. The server turns them back into float32 before it aggregates,
so only the clients' weights are rounded, never the sum. Changes the math: off by default, and
recorded in run.json."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

TRANSPORTS = ("float32", "float16", "bfloat16")


def encode(weights: Sequence[np.ndarray], transport: str) -> list[np.ndarray]:
    """Float32 arrays in the transport's precision (bfloat16 as its raw 16 bits, uint16: NumPy has no
    bfloat16); every other array as it is."""
    if transport == "float32":
        return list(weights)
    if transport == "float16":
        return [w.astype(np.float16) if w.dtype == np.float32 else w for w in weights]
    return [torch.from_numpy(np.ascontiguousarray(w)).to(torch.bfloat16).view(torch.uint16).numpy()
            if w.dtype == np.float32 else w for w in weights]


def decode(arrays: Sequence[np.ndarray], transport: str) -> list[np.ndarray]:
    """Arrays as `encode` sent them, back in float32 (exactly: float16 and bfloat16 are float32 subsets)."""
    if transport == "float32":
        return list(arrays)
    if transport == "float16":
        return [a.astype(np.float32) if a.dtype == np.float16 else a for a in arrays]
    return [(a.astype(np.uint32) << 16).view(np.float32) if a.dtype == np.uint16 else a for a in arrays]

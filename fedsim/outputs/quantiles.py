"""Exact quantiles of large float32 arrays by counting their bit patterns in buckets (no full sort)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

RADIX_MIN = 1 << 20  # values from which exact_quantiles counts buckets instead of calling np.quantile


# float32 buckets by their top 16 bits, in value order: negative ones from the largest bit
# pattern down, then positive ones up.
_BUCKET_ORDER = np.concatenate([np.arange(0xFFFF, 0x7FFF, -1), np.arange(0x8000)])


def _high_bits(values: np.ndarray) -> np.ndarray:
    """The top 16 bits of each float32 (sign, exponent, 7 mantissa bits): its bucket."""
    halves = values.view(np.uint16)
    return halves[..., 1::2] if sys.byteorder == "little" else halves[..., 0::2]


def bucket_counts(values: np.ndarray) -> np.ndarray:
    """How many float32 values fall in each of the 65,536 buckets; summable over disjoint parts."""
    return np.bincount(_high_bits(np.ascontiguousarray(values, dtype=np.float32)).ravel(), minlength=1 << 16)


def exact_quantiles(
    values: np.ndarray | Sequence[np.ndarray], qs: Sequence[float], counts: np.ndarray | None = None
) -> list[float]:
    """np.quantile over all of `values` (an array, or several arrays taken together), exactly.

    Sorting or partitioning tens of millions of values every round is the slow way; instead the values
    are counted by their top 16 bits (`counts`, if the caller has them already), and only the few
    buckets that hold the wanted ranks are gathered and sorted (a radix select).
    """
    parts = [
        np.ascontiguousarray(v, dtype=np.float32).ravel()
        for v in (values if isinstance(values, (list, tuple)) else [values])
    ]
    n = sum(p.size for p in parts)
    if n < RADIX_MIN or not all(np.isfinite(p.min() + p.max()) for p in parts if p.size):
        return [float(v) for v in np.quantile(np.concatenate(parts), qs)]  # small, NaN or inf: NumPy's way
    counts = np.sum([bucket_counts(p) for p in parts], axis=0) if counts is None else counts
    ends = np.cumsum(counts[_BUCKET_ORDER])
    positions = [q * (n - 1) for q in qs]
    ranks = sorted({r for p in positions for r in (int(p), min(int(p) + 1, n - 1))})
    buckets = np.searchsorted(ends, ranks, side="right")
    found: dict[int, float] = {}
    for bucket in set(buckets.tolist()):
        first = int(ends[bucket - 1]) if bucket else 0
        members = np.sort(np.concatenate([p[_high_bits(p) == _BUCKET_ORDER[bucket]] for p in parts]))
        found.update({rank: float(members[rank - first]) for rank, b in zip(ranks, buckets) if b == bucket})
    out = []
    for p in positions:
        lo, hi = int(p), min(int(p) + 1, n - 1)
        out.append(found[lo] + (found[hi] - found[lo]) * (p - lo))
    return out

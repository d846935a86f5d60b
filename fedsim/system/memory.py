"""Process memory: keep the driver's freed weight buffers going back to the OS, and measure it."""

from __future__ import annotations

import ctypes
import resource
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers


MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value, now kept fixed


TRIM_THRESHOLD_BYTES = 128 * 1024  # glibc's default: free memory above this at the heap's top goes back to the OS


def return_freed_buffers_to_os() -> None:
    """Fix glibc's mmap threshold so every buffer >= 128 KiB gets its own mapping, unmapped when freed.

    By default glibc raises the threshold after large frees (up to 32 MiB), so later weight-sized
    buffers come from the heap, which fragments and grows round after round: the driver's private
    memory rose every round with MiniLM before this, and stays flat with it (docs/benchmarks/measured.md,
    "Archive and driver memory"). No-op where libc is not glibc.
    """
    _set_mmap_threshold(MMAP_THRESHOLD_BYTES)


def _mallopt(parameter: int, value: int) -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(parameter, value)
    except (OSError, AttributeError):
        pass


def _set_mmap_threshold(num_bytes: int) -> None:
    _mallopt(M_MMAP_THRESHOLD, num_bytes)


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextmanager
def small_buffers_on_heap(limit_bytes: int = 8 << 20) -> Iterator[None]:
    """Within the block, buffers below `limit_bytes` come from the heap again, and the heap keeps what they free
    until the block ends, when it goes back to the OS at once.

    Blocked computations (weight scrutiny, Flower's aggregation of a round's replies) allocate and free
    MB-sized temporaries thousands of times a round; with the driver's fixed 128 KiB threshold each one is
    a fresh mapping whose pages the kernel must zero, and a heap trimmed after every free faults them in
    again, which slowed both markedly (docs/benchmarks/measured.md, "Figures behind choices in the code").
    Restored on exit.
    """
    _set_mmap_threshold(limit_bytes)
    _mallopt(M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        _set_mmap_threshold(MMAP_THRESHOLD_BYTES)
        _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        _trim()


def memory_mb() -> dict[str, float]:
    """This process's resident memory now (Linux): total, and the part that is shared memory.

    The shared part is mostly Ray's object store pages mapped into the driver; Ray bounds it.
    Elsewhere: the peak resident size, and no shared figure.
    """
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        kb = {key: int(fields[key].split()[0]) for key in ("VmRSS", "RssShmem")}
        return {"rss": kb["VmRSS"] / 1024, "shared": kb["RssShmem"] / 1024}
    except (OSError, KeyError, ValueError):
        return {"rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "shared": float("nan")}

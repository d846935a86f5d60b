"""The driver's freed weight buffers go back to the OS instead of fragmenting the heap round after round."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedsim.system.memory import memory_mb

# Frees a 16 MB buffer (glibc then raises its mmap threshold), allocates 20 x 4 MB buffers with a
# small allocation pinned after each, frees the big ones and prints how much private memory stayed.
SCRIPT = """
import sys
import numpy as np
from fedsim.system.memory import return_freed_buffers_to_os
def anon_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon")) / 1024
if sys.argv[1] == "fixed":
    return_freed_buffers_to_os()
big = np.ones(2**21); del big
before = anon_mb()
blocks, pins = [], []
for _ in range(20):
    blocks.append(np.ones(2**19))
    pins.append(bytearray(4096))
del blocks
print(anon_mb() - before)
"""


def retained_mb(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return float(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_freed_buffers_return_to_the_os():
    """fedsim's setting gives the 80 MB back, whatever glibc's default would have kept on this machine."""
    assert retained_mb("fixed") < 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc only")
def test_memory_mb_reads_this_processs_status():
    memory = memory_mb()
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    rss_mb, shared_mb = (int(status[key].split()[0]) / 1024 for key in ("VmRSS", "RssShmem"))
    assert memory["rss"] == pytest.approx(rss_mb, abs=5) and memory["shared"] == pytest.approx(shared_mb, abs=5)

"""A run.json saying `running` is alive only while its process is (same host) or its heartbeat is fresh."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from fedsim.rundir import STALE_AFTER_S, effective_status


def test_a_finished_status_is_taken_as_it_is():
    assert effective_status({"status": "completed", "pid": 1}) == "completed"


def test_on_this_host_the_pid_decides():
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    assert effective_status({"status": "running", "host": host, "pid": os.getpid()}) == "running"
    assert effective_status({"status": "running", "host": host, "pid": gone.pid}) == "dead"


def test_elsewhere_the_heartbeat_decides():
    now = time.time()
    other = {"status": "running", "host": "another-machine", "pid": os.getpid()}
    assert effective_status({**other, "heartbeat_at": now - 1}, now) == "running"
    assert effective_status({**other, "heartbeat_at": now - STALE_AFTER_S - 1}, now) == "dead"

"""An entry point for fedsim.runtimes.superexec's fork server in tests: it records how it was started."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def record() -> None:
    """Writes this process's argv, pid and parent's pid to $FORK_RECORDS/<pid>.json and says so on stdout, then
    exits with argv[1]."""
    out = Path(os.environ["FORK_RECORDS"]) / f"{os.getpid()}.json"
    out.write_text(json.dumps({"argv": sys.argv, "pid": os.getpid(), "ppid": os.getppid()}))
    print(f"recorded {sys.argv[2]}", flush=True)
    sys.exit(int(sys.argv[1]))

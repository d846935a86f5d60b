"""Flower's SuperLink with fedsim's SuperExec: `python -m fedsim.runtimes.superlink ARGS` takes
flower-superlink's arguments.

With `--isolation subprocess` the SuperLink starts a SuperExec that starts each run's ServerApp; this
launcher makes it fedsim.runtimes.superexec's (Flower's, its ServerApp forked from a warm process that
retries for a reply's parts every IDLE_S, not after 1 s, 2 s ...) rather than `flower-superexec`, with
the same arguments.
"""

from __future__ import annotations

import importlib
import sys

from fedsim.runtimes.superexec import SubprocessWith, start_superexec


def main() -> None:
    # The package exports the function under the module's name: the module itself from importlib.
    module = importlib.import_module("flwr.superlink.cli.flower_superlink")

    module.subprocess = SubprocessWith(start_superexec)
    sys.argv[0] = "flower-superlink"
    module.flower_superlink()


if __name__ == "__main__":
    main()

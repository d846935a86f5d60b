"""The command lines: main.py's command (its checks before anything starts, and how each way of ending prints).
The top layer: it picks the runtime (fedsim.runtimes) that runs the run (fedsim.run)."""

"""Ray's and Flower's messages to main.log (fedsim.runtimes.engine_logs): Ray's driver still relays its nodes'
errors through the name engine_logs_to replaces."""

from __future__ import annotations

import ast
import inspect
import logging
import textwrap


def test_rays_driver_relays_its_nodes_errors_through_the_name_engine_logs_to_replaces(tmp_path):
    """Patch `ray._private.worker.print_to_stdstream` (fedsim.runtimes.engine_logs.engine_logs_to, for each
    simulation at log_level WARNING and above), and read `print_worker_logs`. Guards Ray's
    `listen_error_messages`, the driver's thread that prints the errors its nodes publish (a dead worker, a
    raylet's log dump): it prints them through the module's `print_to_stdstream`, which now appends them to
    main.log (reads the source: the thread needs a GCS)."""
    from ray._private import worker

    from fedsim.runtimes.engine_logs import engine_logs_to

    calls = [
        node.func.id
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(worker.listen_error_messages))))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]
    assert "print_to_stdstream" in calls
    log = tmp_path / "main.log"
    with engine_logs_to(log, "WARNING"):
        worker.print_to_stdstream({"lines": ["A worker died"], "pid": "raylet", "is_err": False}, ignore_prefix=False)
        logging.getLogger("flwr").error("An exception was raised when processing a message")
    assert "A worker died" in log.read_text() and "An exception was raised" in log.read_text()
    assert worker.print_to_stdstream.__name__ == "print_to_stdstream"  # Ray's own again

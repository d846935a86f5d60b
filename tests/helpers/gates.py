"""Runs that stop where a test wants them, in any process of the run (the driver, a Ray actor, a ClientApp).

`model.optimizer._target_=helpers.gates.adam_after_gate` holds clients as their local training starts
(each client builds its optimizer then); `model.net._target_=helpers.gates.bow_after_gate` holds the
run as it builds its model at start-up. Each call takes a numbered ticket in the folder
FEDSIM_TEST_GATE names; the calls from ticket FEDSIM_TEST_GATE_OPEN on (default 0) wait there until
the test creates `open`, or 300 s pass. So a test knows, without timing, that a signal lands while
training (or start-up) is under way. `helpers` is importable by every process through PYTHONPATH.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path

import torch

from fedsim.model.nets import BagOfNgrams

ADAM_GATE = "model.optimizer._target_=helpers.gates.adam_after_gate"  # main.py's override that gates clients


def ticket(gate: Path) -> int:
    """The next free number in `gate`, taken atomically (O_EXCL) however many processes ask at once."""
    for number in itertools.count():
        try:
            os.close(os.open(gate / f"ticket_{number:04d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return number
        except FileExistsError:
            continue
    raise AssertionError("unreachable")


def wait_at_gate() -> None:
    gate = Path(os.environ["FEDSIM_TEST_GATE"])
    if ticket(gate) >= int(os.environ.get("FEDSIM_TEST_GATE_OPEN", "0")):
        (gate / f"waiting_{os.getpid()}").touch()
        deadline = time.monotonic() + 300
        while not (gate / "open").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def adam_after_gate(params, lr: float, **options) -> torch.optim.Optimizer:
    wait_at_gate()
    return torch.optim.Adam(params, lr=lr, **options)


def bow_after_gate(**options) -> BagOfNgrams:
    wait_at_gate()
    return BagOfNgrams(**options)


def waiting(gate: Path) -> bool:
    """Whether some process of the run is held at the gate."""
    return any(gate.glob("waiting_*"))


def gated_env(gate: Path, open_from: int = 0, **extra: str) -> dict[str, str]:
    """The environment for a main.py whose processes stop at `gate` from ticket `open_from` on."""
    gate.mkdir(parents=True, exist_ok=True)
    tests = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "FEDSIM_TEST_GATE": str(gate),
        "FEDSIM_TEST_GATE_OPEN": str(open_from),
        "PYTHONPATH": path,
        **extra,
    }


def bow_then_native_exit(**options) -> BagOfNgrams:
    """Ends the process that builds the model at once, as native code does (a segfault, Ray's core worker ending
    its driver): no Python runs on the way out."""
    os._exit(1)

"""What the local federation's processes write: the line that says a SuperNode joined, the line that says
why a process stopped (and what Flower's words for a refusal mean here), and `flwr run`'s stream, logged
and relayed without Flower's chatter."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

JOINED = "SuperNode ID:"  # a SuperNode's log line once the SuperLink has accepted it


# Flower's own log lines and CLI notices, relayed only at log_level INFO or DEBUG.
FLOWER_CHATTER = re.compile(
    r"^(\x1b\[[0-9;]*m)?(DEBUG|INFO|WARNING)\s*(\x1b\[0m)?\s*:|^Flower App configuration "
    r"warnings|^- Recommended property|^Using SuperLink:|^Successfully (started run|installed)"
)


HINTS = {  # Flower's words for a refusal, and what they mean here
    "CERTIFICATE_VERIFY_FAILED": "the node's CA (--root-certificates) does not trust the SuperLink's certificate",
    "Failed to activate SuperNode": "the SuperLink does not know the node's public key (register it with "
    "`flwr supernode register NODE.pub`)",
}


def reason(lines: list[str]) -> str:
    """The line of a log that says why a process stopped: the last error or exception line."""
    for line in reversed(lines):
        text = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if re.search(r"error|refused|denied|fail|certificate|unauthori[sz]ed|exception", text, re.IGNORECASE):
            return text
    return next((line.strip() for line in reversed(lines) if line.strip()), "no output")


def hint(why: str) -> str:
    """`: what it means` for a refusal in Flower's words (HINTS), or nothing."""
    return next((f": {h}" for words, h in HINTS.items() if words in why), "")


def relay(stream: Iterable[str], log_path: Path, out: TextIO, verbose: bool) -> None:
    """Every line of `stream` into `log_path`, and to `out` up to a ServerApp traceback (it stays in the
    log: the run's one-line error is in run.json), Flower's chatter only if `verbose`."""
    hiding = False
    with open(log_path, "a") as log:
        for line in stream:
            log.write(line)
            log.flush()
            hiding = hiding or "ServerApp raised an exception" in line
            if not hiding and (verbose or not FLOWER_CHATTER.match(line)):
                out.write(line)
                out.flush()

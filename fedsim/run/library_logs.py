"""What Flower's, Ray's and the Hugging Face libraries' loggers print during a run: below `log_level`, nothing,
and two of Flower's notices not even at it, since they report choices fedsim made or the user made on purpose.

`quiet` runs as soon as the config is checked (fedsim.run.experiment.build), before the strategy is built: a
Flower strategy logs at construction, and until then Flower's logger hands its records to the root logger,
whose handler (Hydra's) prints them on the terminal.
"""

from __future__ import annotations

import logging
import os

# Flower's notices fedsim keeps off the terminal at WARNING and above: each reports a choice, not a problem.
NOTICES = (
    "DEPRECATED FEATURE",  # run_simulation, still Flower's only Python entry into its simulation
    "Federated evaluation will be skipped",  # strategy.fraction_evaluate=0; fed_acc then reads "-"
)


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in NOTICES)


def quiet(log_level: str) -> None:
    """Keep Ray's and Flower's chatter below `log_level`; flwr logs once, through its own handler."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    for name in ("flwr", "ray", "transformers", "datasets", "filelock"):
        logging.getLogger(name).setLevel(log_level)
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False
    if logging.getLevelNamesMapping()[log_level] > logging.INFO:
        for handler in flwr_logger.handlers:
            if not any(isinstance(f, _DropNotices) for f in handler.filters):
                handler.addFilter(_DropNotices())

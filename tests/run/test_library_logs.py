"""Flower's notices of a choice stay off the terminal (fedsim.run.library_logs), from the moment the config is
checked: a strategy logs as it is built."""

from __future__ import annotations

import logging

import pytest
from helpers.configs import make_cfg

from fedsim.run.experiment import build
from fedsim.run.library_logs import NOTICES, _DropNotices

SKIPPED = "fraction_evaluate is set to 0.0. Federated evaluation will be skipped."  # FedAvg's, as it is built


@pytest.fixture
def flower_logger_as_imported(monkeypatch) -> logging.Logger:
    """Flower's logger as a fresh process has it: handing records to the root logger, its handler unfiltered."""
    flwr = logging.getLogger("flwr")
    monkeypatch.setattr(flwr, "propagate", True)
    for handler in flwr.handlers:
        monkeypatch.setattr(handler, "filters", [f for f in handler.filters if not isinstance(f, _DropNotices)])
    return flwr


def test_building_a_run_without_federated_evaluation_hands_the_root_logger_no_notice(flower_logger_as_imported, caplog):
    """The root logger's handler is Hydra's, on the terminal: Flower's logger must stop handing it records before
    the strategy is built."""
    with caplog.at_level(logging.WARNING):
        build(make_cfg("strategy.fraction_evaluate=0", "data.val_fraction=0"))
    assert not [r.getMessage() for r in caplog.records if r.name == "flwr"]


def test_flowers_own_handler_drops_the_notices_and_passes_its_other_warnings(flower_logger_as_imported):
    build(make_cfg())
    handlers = flower_logger_as_imported.handlers
    assert handlers and not flower_logger_as_imported.propagate

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("flwr", logging.WARNING, __file__, 1, message, None, None)

    assert all(not handler.filter(record(SKIPPED)) for handler in handlers)
    assert all(not handler.filter(record(f"{notice} ...")) for handler in handlers for notice in NOTICES)
    assert all(handler.filter(record("a warning fedsim does not know")) for handler in handlers)

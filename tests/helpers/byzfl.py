"""ByzFL (EPFL's `byzfl` 0.0.11, installed by the Makefile's setup without its requirements), the implementation no
one here wrote, loaded without its package `__init__`: that one imports ByzFL's training framework and benchmarks
(torchvision, seaborn, matplotlib's pyplot), none of which its aggregators and attacks need."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from importlib.metadata import version

VERSION = "0.0.11"


def byzfl(module: str) -> types.ModuleType:
    """`byzfl.<module>` (e.g. "aggregators.aggregators"), imported under a bare `byzfl` package."""
    if "byzfl" not in sys.modules:
        spec = importlib.util.find_spec("byzfl")
        assert spec is not None and spec.submodule_search_locations, "byzfl is not installed: make setup"
        package = types.ModuleType("byzfl")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = package
    assert version("byzfl") == VERSION, f"the checks are against ByzFL {VERSION}"
    return importlib.import_module(f"byzfl.{module}")

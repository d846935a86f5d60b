"""Load a run or a collection into pandas DataFrames, for notebooks: `from fedsim.results import load`."""

from fedsim.results.loading import (
    CollectionResults,
    RunResults,
    config_columns,
    load,
    load_collection,
    load_run,
)

__all__ = ["CollectionResults", "RunResults", "config_columns", "load", "load_collection", "load_run"]

"""IMDB for federated clients: read it, featurize each split once into a cache, partition, and batch.

`load_data(prepared, partition_id, batch_size)` is a client's train and validation loaders.
"""

from fedsim.data.loader import Loader, load_data, load_test
from fedsim.data.prepare import PreparedData, load_prepared, prepare_data

__all__ = ["Loader", "PreparedData", "load_data", "load_prepared", "load_test", "prepare_data"]

"""A model's weights as NumPy lists in state_dict order, and their names."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """The model's state as the NumPy list Flower sends, in state_dict order.

    Copies, because one model object serves every client of an actor in turn.
    """
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load a NumPy list (state_dict order) into the model in place; read-only views are only read."""
    keys = list(model.state_dict().keys())
    if len(keys) != len(weights):
        raise ValueError(f"expected {len(keys)} arrays, got {len(weights)}")
    state = OrderedDict((k, torch.from_numpy(np.asarray(w))) for k, w in zip(keys, weights))
    model.load_state_dict(state, strict=True)


def layer_names(model: nn.Module) -> list[str]:
    return list(model.state_dict().keys())

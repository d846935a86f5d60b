"""An IMDBClient over a generated dataset's partition, built as a worker builds it but with its own model."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from fedsim.client.client import ClientSettings, IMDBClient
from fedsim.config.settings import DataSettings
from fedsim.data.loader import load_data
from fedsim.data.prepare import prepare_data


def make_client(cfg: DictConfig, partition_id: int = 0) -> IMDBClient:
    prepare_data(DataSettings.of(cfg))
    settings = ClientSettings.from_cfg(cfg)  # finds the prepared data from the config alone, as a worker does
    torch.manual_seed(0)
    model = instantiate(cfg.model.net)
    trainloader, valloader = load_data(settings.prepared, partition_id, cfg.client.batch_size)
    return IMDBClient(partition_id, model, trainloader, valloader, settings)

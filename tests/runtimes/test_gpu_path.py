"""The GPU path, checked on a CPU: resources reach Ray, and a GPU share without a GPU is refused up front."""

from __future__ import annotations

import pytest
import torch
from helpers.configs import make_cfg as _cfg

from fedsim.client.client import ClientSettings
from fedsim.config.settings import SimulationSettings
from fedsim.config.validate import validate
from fedsim.runtimes.simulation import backend_config
from fedsim.system.errors import ConfigError


def test_fractional_gpu_share_reaches_flowers_ray_backend():
    config = backend_config(SimulationSettings.of(_cfg("resources.num_gpus=0.25", "resources.num_cpus=2")))
    assert config["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.25}


def test_gpu_share_without_a_gpu_is_refused_before_ray_starts(monkeypatch):
    monkeypatch.setattr("fedsim.config.validate._gpu_count", lambda: 0)
    with pytest.raises(ConfigError, match=r"^resources.num_gpus: got 0.5, but no CUDA GPUs are visible"):
        validate(_cfg("resources.num_gpus=0.5"))
    validate(_cfg("resources.num_gpus=0"))


def test_gpu_share_with_a_gpu_is_accepted_up_to_the_machines_gpus(monkeypatch):
    monkeypatch.setattr("fedsim.config.validate._gpu_count", lambda: 1)
    validate(_cfg("resources.num_gpus=0.5"))
    validate(_cfg("resources.num_gpus=1"))
    with pytest.raises(ConfigError, match=r"^resources.num_gpus: got 2, but 1 CUDA GPU is visible"):
        validate(_cfg("resources.num_gpus=2"))


def test_clients_use_cuda_only_when_asked_and_present():
    settings = dict(
        prepared=None,
        net=None,
        featurizer=None,
        cache_dir="",
        val_fraction=0.2,
        optimizer=None,
        local_epochs=1,
        batch_size=2,
        lr=0.1,
        num_threads=1,
        seed=0,
        log_level="WARNING",
        attack=None,
    )
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert ClientSettings(use_gpu=True, **settings).device.type == expected
    assert ClientSettings(use_gpu=False, **settings).device.type == "cpu"

"""The partition group's checks (fedsim.config.partitions): every option conf/partition/ has either fits IMDB or
is refused in one line saying why; arguments that cannot work with num_clients are refused before any data is
read; a resumed run's saved target upgraded to where the partitioner lives now."""

from __future__ import annotations

import pytest
from helpers.configs import make_cfg
from helpers.runs import ROOT
from hydra.utils import get_method
from omegaconf import OmegaConf

from fedsim.config.partitions import DOES_NOT_FIT, FITTING
from fedsim.config.resume import _rename_targets
from fedsim.config.validate import validate
from fedsim.data.partitioners import pathological_partitioner
from fedsim.system.errors import ConfigError

OPTIONS = sorted(path.stem for path in (ROOT / "conf" / "partition").glob("*.yaml"))
REFUSED = sorted(set(OPTIONS) - set(FITTING))


def test_every_option_either_fits_or_names_a_partitioner_that_does_not():
    assert set(FITTING) <= set(OPTIONS)
    named = {make_cfg(f"partition={option}").partition._target_.rsplit(".", 1)[-1] for option in REFUSED}
    assert named == set(DOES_NOT_FIT)


@pytest.mark.parametrize("option", REFUSED)
def test_a_partitioner_that_does_not_fit_is_refused_with_its_reason(option):
    with pytest.raises(ConfigError) as refused:
        validate(make_cfg(f"partition={option}"))
    line = str(refused.value)
    assert line.startswith("partition: ") and ("IMDB" in line or "vertical FL" in line)
    assert "\n" not in line and line.endswith("allowed: " + ", ".join(FITTING))


SIZES = "partition.partition_sizes"


@pytest.mark.parametrize(
    "clients, overrides, key, says",
    [
        (10, ["partition=size", f"{SIZES}=[10,20]"], SIZES, "a list of 10 integers"),
        (3, ["partition=size", f"{SIZES}=[0,1,1]"], SIZES, ">= 1"),
        (10, ["partition=size", f"{SIZES}=100"], SIZES, "null (even sizes)"),
        (3, ["partition=inner_dirichlet", "data.train_size=500", f"{SIZES}=[200,200,200]"], SIZES, "600 rows in all"),
        (9, ["partition=distribution", "partition.labels_per_client=1"], "partition.labels_per_client", "even"),
        (10, ["partition=shard", "partition.num_shards_per_partition=0"], "partition.num_shards_per_partition", ">= 1"),
        (10, ["partition=continuous", "partition.strictness=2"], "partition.strictness", "[0, 1]"),
        (10, ["partition=distribution", "partition.sigma=0"], "partition.sigma", "> 0"),
    ],
)
def test_arguments_that_cannot_work_are_one_line(clients, overrides, key, says):
    with pytest.raises(ConfigError) as refused:
        validate(make_cfg(f"num_clients={clients}", *overrides))
    assert str(refused.value).startswith(f"{key}: ") and says in str(refused.value)


@pytest.mark.parametrize(
    "saved", ["fedsim.data.pathological_partitioner", "fedsim.data.partition.pathological_partitioner"]
)
def test_a_resumed_runs_saved_pathological_target_names_where_it_lives_now(saved):
    config = OmegaConf.create({"partition": {"_target_": saved, "num_partitions": 2}})
    _rename_targets(config)
    assert get_method(config.partition._target_) is pathological_partitioner

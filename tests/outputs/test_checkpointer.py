"""checkpoint.safetensors keys each output's state by the output's name, so a resume finds every state where it
was saved even when another output was added or removed; a checkpoint of the older, by-place format loads under
the same names."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from helpers.patching import dp_reply
from safetensors.numpy import save_file

from fedsim.outputs.base import Callback, state_keys
from fedsim.outputs.checkpointer import FORMAT, Checkpoint
from fedsim.outputs.phases import Outputs
from fedsim.rundir import CHECKPOINT

NAMES = ["w"]


class Tally(Callback):
    def __init__(self, start: int = 0) -> None:
        self.count, self.saved = start, None

    def on_run_start(self, saved):
        self.saved = saved

    def state(self):
        return {"count": self.count}


class Other(Tally):
    pass


def test_state_keys_are_class_names_numbered_where_a_class_repeats():
    assert state_keys([Tally(), Other(), Tally(), Tally()]) == ["Tally", "Other", "Tally#2", "Tally#3"]


def test_a_resume_finds_each_outputs_state_by_name_when_another_output_comes_first(tmp_path):
    first, second = Tally(3), Other(7)
    Checkpoint(1, [np.zeros(2)], {}, {}, dict(zip(state_keys([first, second]), [first.state(), second.state()]))).save(
        tmp_path, NAMES
    )
    saved = Checkpoint.load(tmp_path, NAMES)
    assert saved is not None and saved.server_round == 1
    added, again_first, again_second = Callback(), Tally(), Other()
    Outputs([added, again_second, again_first]).start(saved.outputs)  # a new output, and the order changed
    assert again_first.saved == {"count": 3} and again_second.saved == {"count": 7}


def test_a_format_1_checkpoints_states_by_place_load_under_their_names(tmp_path):
    meta = {"format": 1, "round": 4, "strategy": {}, "outputs": {"1:Other": {"count": 7}, "0:Tally": {"count": 3},
                                                                 "2:Tally": {"count": 5}}}  # fmt: skip
    save_file({"model/w": np.ones(2)}, str(tmp_path / CHECKPOINT), metadata={"fedsim": json.dumps(meta)})
    saved = Checkpoint.load(tmp_path, NAMES)
    assert FORMAT > 1 and saved is not None
    assert saved.outputs == {"Tally": {"count": 3}, "Other": {"count": 7}, "Tally#2": {"count": 5}}
    np.testing.assert_array_equal(saved.weights[0], np.ones(2))


def test_a_strategys_state_is_in_its_instance_attributes_which_a_checkpoint_restores(task_identity):
    """Read and set, not patched: a strategy's state through `vars()` and `setattr`
    (fedsim.outputs.checkpointer.strategy_state, restore_strategy). Guards Flower's FedAdam (`FedOpt`): what a round
    carries to the next (its moments `m_t`, `v_t`) is held in instance attributes of arrays, so a strategy rebuilt
    from a checkpoint aggregates the next round to the same bits as the one that went on."""
    from flwr.serverapp.strategy import FedAdam

    from fedsim.outputs.checkpointer import restore_strategy, strategy_state

    grid = SimpleNamespace(get_node_ids=lambda: [2, 3])
    rng = np.random.default_rng(0)
    weights = ArrayRecord({"w": Array(np.zeros(6, np.float32))})

    def round_(strategy: Any, server_round: int, arrays: ArrayRecord) -> ArrayRecord:
        list(strategy.configure_train(server_round, arrays, ConfigRecord(), grid))
        replies = [
            dp_reply(arrays["w"].numpy() + rng.normal(size=6).astype(np.float32), {"num-examples": 4}) for _ in range(2)
        ]
        return strategy.aggregate_train(server_round, replies)[0]

    went_on = FedAdam()
    weights = round_(went_on, 1, weights)
    tensors, layout = strategy_state(went_on)
    assert {"m_t", "v_t"} <= set(layout)
    rebuilt = FedAdam()
    restore_strategy(rebuilt, tensors, layout)
    state = rng.bit_generator.state
    expected = round_(went_on, 2, weights)
    rng.bit_generator.state = state  # the same replies for the rebuilt strategy
    assert round_(rebuilt, 2, weights)["w"].numpy().tobytes() == expected["w"].numpy().tobytes()

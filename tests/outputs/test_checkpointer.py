"""checkpoint.safetensors keys each output's state by the output's name, so a resume finds every state where it
was saved even when another output was added or removed; a checkpoint of the older, by-place format loads under
the same names."""

from __future__ import annotations

import json

import numpy as np
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

"""fedsim's adaptive clipping for a fixed-size cohort (fedsim.privacy.adaptive): the norm moves toward the target
quantile, and the keys and helpers fedsim reads are the ones Flower's clipping mods use."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg
from helpers.patching import calls_to, dp_reply


@pytest.mark.parametrize("norm, clipped", [(3.0, True), (0.5, False)])
def test_server_side_adaptive_clipping_moves_the_norm_toward_the_target_quantile(norm, clipped, task_identity):
    """No patch: server-side adaptive clipping is fedsim's own wrapper (fedsim.privacy.adaptive, in place of an
    override of Flower's private `_geometric_update`): after clipping the replies the norm follows fedsim's rule
    (more clipped than the target: it grows), not Flower 1.42's (it would shrink)."""
    from fedsim.privacy.dp import WEIGHT_KEY, Privacy

    privacy = Privacy(mode="server_adaptive", noise_multiplier=0.0, initial_clipping_norm=1.0, clip_norm_lr=0.2)
    strategy = privacy.wrap(FedAvg(), num_sampled_clients=2)
    start = np.zeros(8, np.float32)
    strategy.configure_train(
        1, ArrayRecord({"w": Array(start)}), ConfigRecord(), SimpleNamespace(get_node_ids=lambda: [2, 3])
    )
    update = np.full(8, norm / math.sqrt(8), np.float32)  # of L2 norm `norm`
    strategy.aggregate_train(1, [dp_reply(start + update, {WEIGHT_KEY: 1, "num-examples": 4}) for _ in range(2)])
    fraction = 1.0 if clipped else 0.0
    assert strategy.clipping_norm == pytest.approx(math.exp(0.2 * (fraction - 0.5)))


@pytest.mark.parametrize("clipped", [True, False])
def test_client_side_adaptive_clipping_moves_the_norm_toward_the_target_quantile(clipped, task_identity):
    """No patch: client-side adaptive clipping is fedsim's own wrapper (fedsim.privacy.adaptive): it counts the
    `norm_bit` Flower's `adaptiveclipping_mod` reports and moves the norm by fedsim's rule, not Flower 1.42's."""
    from flwr.supercore.differential_privacy import KEY_NORM_BIT

    from fedsim.privacy.dp import WEIGHT_KEY, Privacy

    privacy = Privacy(mode="client_adaptive", noise_multiplier=0.0, initial_clipping_norm=1.0, clip_norm_lr=0.2)
    strategy = privacy.wrap(FedAvg(), num_sampled_clients=2)
    metrics = {WEIGHT_KEY: 1, "num-examples": 4, KEY_NORM_BIT: int(clipped)}  # as adaptiveclipping_mod sends it
    strategy.aggregate_train(1, [dp_reply(np.ones(8, np.float32), metrics) for _ in range(2)])
    fraction = 1.0 if clipped else 0.0
    assert strategy.clipping_norm == pytest.approx(math.exp(0.2 * (fraction - 0.5)))


def test_the_clipping_keys_and_helpers_fedsim_reads_are_the_ones_flowers_clipping_mods_use():
    """Read, not patched: `flwr.supercore.differential_privacy` (its keys and helpers: fedsim.privacy.adaptive,
    fedsim.privacy.fixed_denominator). Guards Flower's client-side clipping mods: they read the norm from the
    round's config under the same KEY_CLIPPING_NORM and report under the same KEY_NORM_BIT, and clip with
    `adaptive_clip_inputs_inplace`, whose True means clipped."""
    from flwr.clientapp.mod import centraldp_mods
    from flwr.supercore import differential_privacy

    assert centraldp_mods.KEY_CLIPPING_NORM == differential_privacy.KEY_CLIPPING_NORM
    assert centraldp_mods.KEY_NORM_BIT == differential_privacy.KEY_NORM_BIT
    assert centraldp_mods.compute_adaptive_clip_model_update is differential_privacy.compute_adaptive_clip_model_update
    assert calls_to(differential_privacy.compute_adaptive_clip_model_update, "adaptive_clip_inputs_inplace")
    update = [np.full(4, 2.0)]
    assert differential_privacy.adaptive_clip_inputs_inplace(update, 1.0) is True and np.linalg.norm(update[0]) <= 1
    assert differential_privacy.adaptive_clip_inputs_inplace([np.full(4, 0.1)], 1.0) is False

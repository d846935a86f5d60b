"""The privacy budget's state (fedsim.outputs.privacy_budget): a fixed-clipping wrapper's norm is its
`clipping_norm` attribute, which a checkpoint keeps."""

from __future__ import annotations

import inspect

from flwr.serverapp.strategy import FedAvg


def test_a_fixed_clipping_wrappers_norm_is_its_clipping_norm_attribute():
    """Read and set, not patched: `clipping_norm` of Flower's fixed-clipping wrappers
    (fedsim.outputs.privacy_budget.PrivacyBudget keeps it in a checkpoint and sets it back on resume, as for
    fedsim's adaptive wrappers). Guards Flower's `DifferentialPrivacyServerSideFixedClipping` and
    `DifferentialPrivacyClientSideFixedClipping`: the norm they clip to is that attribute."""
    from flwr.serverapp.strategy import (
        DifferentialPrivacyClientSideFixedClipping,
        DifferentialPrivacyServerSideFixedClipping,
    )

    for wrapper in (DifferentialPrivacyServerSideFixedClipping, DifferentialPrivacyClientSideFixedClipping):
        assert wrapper(FedAvg(), 1.0, 2.5, 2).clipping_norm == 2.5
    assert "self.clipping_norm" in inspect.getsource(DifferentialPrivacyServerSideFixedClipping.aggregate_train)
    assert "self.clipping_norm" in inspect.getsource(DifferentialPrivacyClientSideFixedClipping.configure_train)

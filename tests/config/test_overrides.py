"""The command line checked before Hydra writes anything (fedsim.config.overrides): config keys are walked
without resolving their values."""

from __future__ import annotations

from omegaconf import OmegaConf


def test_config_keys_are_walked_without_resolving_their_values():
    """Read, not patched: OmegaConf's private `DictConfig._get_node` (fedsim.config.overrides.keys,
    fedsim.config.resume._rename_targets). Guards what fedsim takes it to do: give a key's node without
    resolving its value, so a tree with interpolations that cannot resolve here, or missing values, is walked."""
    from fedsim.config.overrides import keys

    cfg = OmegaConf.create({"a": {"b": "${oc.env:FEDSIM_TEST_NEVER_SET}", "c": {"d": "???"}}, "e": "${nowhere}"})
    assert list(keys(cfg)) == ["a", "a.b", "a.c", "a.c.d", "e"]

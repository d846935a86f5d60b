"""Composing conf/ (fedsim.config.compose) inside a running @hydra.main leaves Hydra as it found it."""

from __future__ import annotations

from omegaconf import OmegaConf


def test_composing_conf_leaves_hydra_as_it_found_it(tmp_path):
    """Read, not patched: `hydra.initialize.get_gh_backup` and `restore_gh_from_backup`
    (fedsim.config.compose._on_conf). Guards what fedsim takes them to do: a compose of conf/ inside an initialized
    Hydra (a resumed run, inside `@hydra.main`) leaves Hydra on the config it was initialized with, and one
    outside any leaves Hydra uninitialized."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from fedsim.config.compose import compose

    (tmp_path / "config.yaml").write_text("mine: 1\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        assert "num_clients" in compose([])
        assert GlobalHydra.instance().is_initialized()
        assert OmegaConf.to_container(hydra_compose(config_name="config")) == {"mine": 1}
    assert "num_clients" in compose([])
    assert not GlobalHydra.instance().is_initialized()

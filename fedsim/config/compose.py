"""The run's config as Flower's apps see it: `context.run_config`.

Two runtimes fill it. `flwr run` gives both apps the `[tool.flwr.app.config]` table of
pyproject.toml with the user's `--run-config` changes: `overrides` (Hydra overrides, the same
words `python main.py` takes) and `results-dir`; each app composes the same config from them.
`python main.py` has composed its config already: in simulation it hands the apps the resolved
config itself, flattened into dotted keys as Flower flattens nested tables, with typed values; on
the deployment runtime its `flwr run` names the resolved config's file (`config-file`, on the disk
every process shares) and the run directory (`run-dir`).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


OVERRIDES_KEY = "overrides"


RESULTS_KEY = "results-dir"


CONFIG_FILE_KEY = "config-file"


RUN_DIR_KEY = "run-dir"


@contextmanager
def _on_conf() -> Iterator[Any]:
    """Hydra initialized on conf/ for the block, whatever it was before: inside `@hydra.main` (a resumed
    run upgrading its saved config) Hydra is initialized already, and is left as it was."""
    from hydra import initialize_config_dir  # Hydra only to compose: a ClientApp process never loads it
    from hydra.core.global_hydra import GlobalHydra  # Hydra only to compose: a ClientApp process never loads it
    from hydra.initialize import get_gh_backup, restore_gh_from_backup  # Hydra only to compose

    before = get_gh_backup()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            yield GlobalHydra.instance()
    finally:
        restore_gh_from_backup(before)


def compose(overrides: Sequence[str]) -> DictConfig:
    """The config `python main.py <overrides>` runs with (without Hydra's own node): the one place fedsim
    composes conf/ (Hydra's own `@hydra.main` composes main.py's, from the same files)."""
    from hydra import compose as hydra_compose  # Hydra only to compose: a ClientApp process never loads it

    with _on_conf():
        return hydra_compose(config_name="config", overrides=list(overrides))


def conf_stamp() -> tuple[tuple[str, int, int], ...]:
    """conf/ as it is now, each file's path, mtime and size: what a composition made earlier in this process
    holds for (a collection's runner checks run after run against the same files)."""
    return tuple((str(path), stat.st_mtime_ns, stat.st_size) for path in sorted(CONF_DIR.rglob("*")) if
                 (stat := path.stat()))  # fmt: skip


def group_options() -> dict[str, list[str]]:
    """Every config group of conf/ (Hydra's own aside) and its options, as Hydra lists them."""
    with _on_conf() as hydra:
        loader = hydra.config_loader()
        return {group: loader.get_group_options(group) for group in loader.list_groups("") if group != "hydra"}


def flatten(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as {dotted.key: value}; lists stay lists."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def unflatten(flat: Mapping[str, Any]) -> DictConfig:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return OmegaConf.create(nested)


def overrides_of(run_config: Mapping[str, Any]) -> list[str]:
    return shlex.split(str(run_config.get(OVERRIDES_KEY, "")))


def config_key(run_config: Mapping[str, Any]) -> str:
    """A hashable stand-in for a run config: each message brings its own copy of the same one."""
    return repr(sorted(run_config.items()))


_LOADED: dict[str, DictConfig] = {}


def config_from(run_config: Mapping[str, Any]) -> DictConfig:
    """The resolved config from a `context.run_config` of either runtime (built once per process)."""
    key = config_key(run_config)
    if key not in _LOADED:
        _LOADED.clear()  # a process serves one run at a time
        if run_config.get(CONFIG_FILE_KEY):
            _LOADED[key] = OmegaConf.load(str(run_config[CONFIG_FILE_KEY]))
        elif OVERRIDES_KEY in run_config:
            _LOADED[key] = compose(overrides_of(run_config))
        else:
            _LOADED[key] = unflatten(run_config)
    return _LOADED[key]

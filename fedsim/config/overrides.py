"""The command line, checked before Hydra writes anything or any worker starts.

Every override must name a key of fedsim's config tree (`conf/`), or a parameter of the object its
node builds (`+strategy.eta=0.01` for a strategy that takes `eta`); every config-group option must
exist; and the whole must compose. Each problem is one ConfigError naming the key and what is
allowed, so a typo (`num_client=5`, `+num_client=5`) is refused instead of lost. Hydra's own keys
(`hydra.*`) are Hydra's to check. Overrides are read with Hydra's own parser, so quoting, lists and
sweeps (`strategy=fedavg,fedprox`, `archive.layers=[a,b]`) mean here what they mean to Hydra.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fedsim.config.compose import compose, conf_stamp, group_options
from fedsim.system.errors import ConfigError, first_line

OPEN = ("tracking.tags",)  # mappings whose keys are the user's own (a tracker's tags)


_ABSENT = object()


def parse(overrides: Sequence[str]) -> list[Override]:
    """Hydra's reading of each override; ConfigError naming the first one Hydra cannot read."""
    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except HydraException as exc:
            key = text.split("=", 1)[0].lstrip("+~") or text
            raise ConfigError(
                key,
                f"cannot read {text!r} ({first_line(exc)}); allowed: KEY=VALUE, +KEY=VALUE, "
                "~KEY, as Hydra's override grammar has them",
            ) from None
    return parsed


def is_hydras(override: Override) -> bool:
    return override.key_or_group == "hydra" or override.key_or_group.startswith(("hydra.", "hydra/"))


def values(override: Override) -> list[str]:
    """The value of an override as a string, or each value of a sweep (`a,b`, `range(3)`, ...)."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def config_pairs(config: str) -> dict[str, str]:
    """A collection's configuration (its overrides joined by spaces, as runs.csv and summary.csv hold it; or
    `defaults`) as {key: value}, in order."""
    return dict(word.split("=", 1) for word in config.split() if "=" in word)


def _compose(overrides: Sequence[str]) -> DictConfig:
    """The config for `overrides`; Hydra's refusal as one ConfigError."""
    try:
        return compose(overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_blamed(overrides, exc), first_line(exc)) from None


@functools.lru_cache(maxsize=4)
def _group_options(stamp: tuple) -> dict[str, list[str]]:
    """conf/'s groups and options, listed once per process while conf/ is as `stamp` says (read, never changed)."""
    return group_options()


@functools.lru_cache(maxsize=32)
def _base(stamp: tuple, choices: tuple[str, ...]) -> DictConfig:
    """The config of the group `choices` alone, whose keys the overrides must name: composed once per process
    while conf/ is as `stamp` says (read, never changed)."""
    return _compose(list(choices))


def _blamed(overrides: Sequence[str], exc: BaseException) -> str:
    """The key an error is about: the override its message names, else the first override."""
    text = str(exc)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key and key in text:
            return key
    return overrides[0].split("=", 1)[0].lstrip("+~") if overrides else "config"


def keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Every key of a config tree, inner nodes included, dotted (values left unresolved)."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            dotted = f"{prefix}.{key}" if prefix else str(key)
            yield dotted
            yield from keys(node._get_node(key), dotted)


def _select(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False)


def _parameters(target: str) -> tuple[list[str], bool]:
    """The parameter names of a `_target_` callable, and whether it takes any keyword (**kwargs)."""
    try:
        signature = inspect.signature(get_object(target))
    except Exception:  # not importable here, or no signature: its own constructor decides
        return [], True
    names = [p.name for p in signature.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return names, any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())


def _builds(cfg: DictConfig, key: str) -> tuple[bool, list[str]]:
    """Whether a new `key` is a parameter of the object its parent node builds, and that object's parameters."""
    parent, _, leaf = key.rpartition(".")
    node = _select(cfg, parent) if parent else _ABSENT
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return False, []
    names, any_keyword = _parameters(str(node["_target_"]))
    return any_keyword or leaf in names, [f"{parent}.{name}" for name in names]


def not_a_key(key: str, cfg: DictConfig, groups: dict[str, list[str]], near: Sequence[str] = ()) -> ConfigError:
    """`KEY: not a fedsim key; allowed: ...`, naming the nearest keys, or the group options that have it."""
    group = key.split(".", 1)[0]
    if group in groups and "." in key:
        having = [option for option in groups[group] if _select(_compose([f"{group}={option}"]), key) is not _ABSENT]
        if having:
            return ConfigError(
                key,
                f"not a key of the chosen {group}; allowed: "
                f"{' or '.join(f'{group}={o}' for o in having)}, which {'have' if len(having) > 1 else 'has'} it",
            )
    candidates = dict.fromkeys(k for k in [*keys(cfg), *groups, *near] if not k.endswith("_target_"))
    nearest = difflib.get_close_matches(key, list(candidates), n=4, cutoff=0.6)
    if not nearest:
        top = [str(k) for k in cfg.keys()]
        return ConfigError(
            key,
            f"not a fedsim key; allowed: a key of conf/ (docs/reference/configuration.md), e.g. {', '.join(top[:8])}",
        )
    return ConfigError(key, f"not a fedsim key; allowed: {', '.join(nearest)} (the nearest keys)")


def check_keys(parsed: Sequence[Override], cfg: DictConfig, groups: dict[str, list[str]]) -> None:
    """Every non-group override names a key of `cfg` (added keys: an open mapping's, or a parameter of the
    object their node builds)."""
    for override in parsed:
        key = override.key_or_group
        if is_hydras(override) or key in groups:
            continue
        present = _select(cfg, key) is not _ABSENT
        if override.type == OverrideType.ADD and present:
            raise ConfigError(key, f"is a fedsim key already; allowed: {key}=VALUE, without '+'")
        if present:
            continue
        if override.type in (OverrideType.ADD, OverrideType.FORCE_ADD):
            if key.startswith(tuple(f"{node}." for node in OPEN)):
                continue
            builds, near = _builds(cfg, key)
            if builds:
                continue
            raise not_a_key(key, cfg, groups, near)
        raise not_a_key(key, cfg, groups)


def check_groups(parsed: Sequence[Override], groups: dict[str, list[str]]) -> None:
    for override in parsed:
        group = override.key_or_group
        if group not in groups or override.type == OverrideType.DEL:
            continue
        for option in values(override):
            if option not in groups[group]:
                raise ConfigError(group, f"no option {option!r}; allowed: {', '.join(groups[group])}")


def check(overrides: Sequence[str]) -> DictConfig | None:
    """Refuse, with one ConfigError, overrides main.py cannot run (values are checked by fedsim.config.validate).

    Sweeps (a multirun's `a,b`) are checked for every combination of their group options; the composed
    config is returned when there is no sweep.
    """
    parsed = parse(overrides)
    mine = [o for o in parsed if not is_hydras(o)]
    stamp = conf_stamp()
    groups = _group_options(stamp)
    check_groups(mine, groups)
    choices = [
        [f"{o.key_or_group}={v}" for v in values(o)]
        for o in mine
        if o.key_or_group in groups and o.type != OverrideType.DEL
    ]
    for combination in itertools.product(*choices):
        check_keys(mine, _base(stamp, combination), groups)
    if any(o.is_sweep_override() for o in parsed):
        return None
    return _compose([o.input_line for o in mine])

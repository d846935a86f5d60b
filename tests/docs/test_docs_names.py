"""Every path, fedsim module (or name in one) and config key that the docs and the README name exists, so a page
cannot go on pointing at a file, a function or a key that was moved or renamed."""

from __future__ import annotations

import importlib
import re
from typing import Any

import pytest
from helpers.runs import ROOT
from omegaconf import DictConfig, OmegaConf

from fedsim.config.compose import CONF_DIR, compose

PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
PATH = re.compile(r"(?<![\w./-])(?:fedsim|conf|bench|tests|docs|deploy)/[\w./*-]*[\w/*]")  # globs too
MODULE = re.compile(r"(?<![\w./{$])fedsim(?:\.[A-Za-z_]\w*)+")  # not `${fedsim.resolver:...}`
PLACEHOLDERS = ("NNN", "NAME", "<")
MADE_BY_COMMANDS = ("deploy/certs", "deploy/results")  # the page's commands write them (deploy/.gitignore)
ABSENT_ON_PURPOSE = {  # keys a page names to say they do not exist (any more)
    "client.momentum": "docs/explanation/byzantine.md: FedProx's clients keep no momentum",
    "strategy.num_nodes_to_select": "docs/explanation/byzantine.md: replaced by strategy.m",
}


def resolved(dotted: str) -> Any:
    """The module or the name in one that `dotted` (fedsim.a.b.Name) names; raises when there is none."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ImportError(dotted)


def test_every_path_the_docs_name_exists():
    missing = sorted(
        {
            f"{page.relative_to(ROOT)}: {path}"
            for page in PAGES
            for path in PATH.findall(page.read_text())
            if not any(p in path for p in PLACEHOLDERS)
            and not path.startswith(MADE_BY_COMMANDS)
            and not any(ROOT.glob(path))
        }
    )
    assert not missing, missing


def test_every_fedsim_module_and_name_the_docs_name_exists():
    missing = []
    for page in PAGES:
        for dotted in sorted(set(MODULE.findall(page.read_text()))):
            if dotted.endswith((".py", ".md", ".yaml")):
                continue
            try:
                resolved(dotted)
            except (ImportError, AttributeError):
                missing.append(f"{page.relative_to(ROOT)}: {dotted}")
    assert not missing, missing


def config_keys(node: DictConfig, prefix: str = "") -> set[str]:
    keys = set()
    for key in node.keys():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        keys.add(dotted)
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            keys |= config_keys(child, dotted)
    return keys


@pytest.fixture(scope="module")
def every_key() -> set[str]:
    """Every key of the config under every option of every group: the composed default, and each option file's
    own keys under its group (a file's keys, not a composition per option: the same set, in a fraction of the
    time; a `_global_` preset only sets keys the other options have)."""
    keys = config_keys(compose([]))
    for group in (d for d in CONF_DIR.iterdir() if d.is_dir()):
        for option in group.glob("*.yaml"):
            node = OmegaConf.load(option)
            if "@package _global_" not in option.read_text():
                keys |= {group.name} | config_keys(node, group.name)
    return keys - {f"{group}.defaults" for group in {k.split(".")[0] for k in keys}}


def is_python_name(dotted: str) -> bool:
    """`ray.init`, `model.safetensors`: a module's name or a file, not a config key."""
    if dotted.endswith((".safetensors", ".py", ".csv", ".json", ".yaml")):
        return True
    try:
        resolved(dotted)
    except (ImportError, AttributeError):
        return False
    return True


def test_every_config_key_the_docs_name_exists(every_key):
    groups = {d.name for d in CONF_DIR.iterdir() if d.is_dir()}
    tops = {key.split(".")[0] for key in every_key} | groups
    missing = set()
    for page in PAGES:
        for code in re.findall(r"`([^`\n]+)`", page.read_text()):
            for word in code.split():
                match = re.match(r"^([a-z_]+(?:\.[A-Za-z_]\w*)*)(=|$)", word)  # `+key=...` adds a key: skipped
                if not match or match.group(1).split(".")[0] not in tops or match.group(1) in groups:
                    continue
                key, assigned = match.groups()
                if ("." in key or assigned) and key not in every_key and key not in ABSENT_ON_PURPOSE:
                    if not is_python_name(key):
                        missing.add(f"{page.relative_to(ROOT)}: {key}")
    assert not sorted(missing), sorted(missing)


def test_the_checks_can_fail(every_key):
    assert "strategy.fraction_train" in every_key and "strategy.fraction_trian" not in every_key
    assert is_python_name("ray.init") and not is_python_name("ray.max_actorz")
    assert resolved("fedsim.rundir.read_info")
    with pytest.raises(AttributeError):
        resolved("fedsim.rundir.read_run_json")
    found = PATH.findall("see fedsim/rundir.py and docs/img/bench-*.png.")
    assert found == ["fedsim/rundir.py", "docs/img/bench-*.png"]

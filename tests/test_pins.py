"""Flower and Ray are the releases fedsim's patches were read against (docs/reference/patches.md): any other
version fails here on purpose, so an upgrade re-reads every row first."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

PATCHES = "docs/reference/patches.md"


def test_the_pinned_flower_and_ray_are_the_ones_the_patches_were_read_against():
    """Every patch names Flower's and Ray's internals as Flower 1.42 and Ray 2.55.1 spell them."""
    assert version("flwr").startswith("1.42."), (
        f"flwr {version('flwr')} is installed, the patches were read against 1.42: re-verify every row of {PATCHES} "
        "against the new Flower, then move the pin in pyproject.toml"
    )
    assert version("ray") == "2.55.1", (
        f"ray {version('ray')} is installed, the patches were read against 2.55.1: re-verify every Ray row of "
        f"{PATCHES}, then move the pin in pyproject.toml"
    )


def test_every_test_the_patches_page_names_exists():
    """docs/reference/patches.md names each row's guard as `tests/PATH::NAME`: a guard moved or renamed fails here."""
    root = Path(__file__).resolve().parents[1]
    named = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", (root / PATCHES).read_text())
    assert len(named) >= 12
    missing = [f"{path}::{name}" for path, name in named if f"def {name}(" not in (root / path).read_text()]
    assert not missing, missing

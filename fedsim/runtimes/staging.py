"""The Flower app `flwr run` submits: fedsim's checkout (ROOT), or a copy of it that holds only what its
FAB draws on."""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the Flower app (pyproject.toml) that `flwr run` submits


def staged_app(root: Path, into: Path) -> Path:
    """A copy of the Flower app at `root` in the new folder `into`, holding the top-level folders its FAB
    draws on (pyproject.toml's `fab-include` patterns) with its pyproject.toml and .gitignore: `root` itself
    where the patterns do not name such folders.

    `flwr run DIR` lists and resolves every file under DIR before it applies the app's patterns (Flower
    1.42's collect_files), a virtual environment inside the checkout included, on every deployment run's
    start. The FAB Flower builds from the copy is the same, byte for byte (its files, and
    their fixed dates)."""
    from flwr.cli.build import get_user_fab_patterns  # Flower's CLI modules only where a deployment starts
    from flwr.cli.config_utils import load  # (as above)

    include, _ = get_user_fab_patterns(load(root / "pyproject.toml") or {})
    tops = {pattern.split("/", 1)[0] for pattern in include or []}
    if not tops or any(set(top) & set("*?[]!") or not (root / top).is_dir() for top in tops):
        return root
    into.mkdir()
    for name in ("pyproject.toml", ".gitignore"):  # Flower's filter reads .gitignore too
        if (root / name).is_file():
            shutil.copy2(root / name, into / name)
    for top in sorted(tops):
        shutil.copytree(root / top, into / top, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return into

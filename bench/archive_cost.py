"""Archive cost: archive.mode=all in float32 and float16 against archive.mode=none, back to back,
bow on full IMDB, 10 clients, 3 rounds (wall time of the whole `python main.py` process).

    python bench/archive_cost.py
    python bench/archive_cost.py -- num_rounds=5
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import add_ratios, machine, run_harness, table

BASE = ["model=bow", "num_clients=10", "num_rounds=3"]
MODES = {
    "none": ["archive.mode=none"],
    "all float32": ["archive.mode=all", "archive.dtype=float32"],
    "all float16": ["archive.mode=all", "archive.dtype=float16"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extra", nargs="*", help="overrides added to every run (after --)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="fedsim-archive-") as tmp:
        for i, (name, overrides) in enumerate(MODES.items()):
            run_dir = Path(tmp) / str(i)
            run = run_harness(BASE + overrides + args.extra, run_dir)
            size = (
                sum(f.stat().st_size for f in (run_dir / "weights").rglob("*") if f.is_file())
                if (run_dir / "weights").exists()
                else 0
            )
            rows.append({"archive": name, "wall s": run.wall_s, "rounds s": run.rounds_s, "archive GB": size / 1e9})
            print(table(rows[-1:]), flush=True)
    add_ratios(rows, {"wall vs none": "wall s", "rounds vs none": "rounds s"})
    print(table(rows))


if __name__ == "__main__":
    main()

"""`python -m fedsim.outputs.from_archive RUN_DIR`: layers.csv's and clients.csv's weight statistics recomputed
offline from a run's archive (archive.mode=all), into layers_offline.csv and clients_offline.csv; they equal the
run's own (fedsim.outputs.layer_stats computes both).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fedsim.outputs.archive import Archive
from fedsim.outputs.layer_stats import round_statistics


def recompute(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """Recompute layers.csv and clients.csv's statistics from an archive (archive.mode=all)."""
    archive = Archive(run_dir)
    layer_rows, client_rows = [], []
    for rnd in archive.rounds():
        if rnd == 0:
            continue
        clients = archive.clients(rnd)
        if not clients:
            raise SystemExit(f"error: {run_dir} has no client weights for round {rnd}; it needs archive.mode=all")
        names = archive.layers()
        start = archive.load(rnd - 1)
        layers, stats = round_statistics(
            names, [start[n] for n in names], [[archive.load(rnd, c)[n] for n in names] for c in clients]
        )
        layer_rows += [{"round": rnd, **row} for row in layers]
        client_rows += [{"round": rnd, "client_id": c, **s} for c, s in zip(clients, stats)]
    return layer_rows, client_rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedsim.outputs.from_archive", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run directory written with archive.mode=all")
    parser.add_argument("--out", type=Path, default=None, help="folder for layers_offline.csv, clients_offline.csv")
    args = parser.parse_args(argv)

    layers, clients = recompute(args.run_dir)
    out = args.out or args.run_dir
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(layers).to_csv(out / "layers_offline.csv", index=False)
    pd.DataFrame(clients).to_csv(out / "clients_offline.csv", index=False)
    print(
        f"wrote {out / 'layers_offline.csv'} ({len(layers)} rows) and {out / 'clients_offline.csv'} "
        f"({len(clients)} rows)"
    )


if __name__ == "__main__":
    main(sys.argv[1:])

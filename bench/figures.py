"""The benchmark page's plots, drawn from the figures checked in beside this script (bench/figures.csv).

    python bench/figures.py draw                   # every plot into docs/img/
    python bench/figures.py draw --out DIR         # elsewhere (the tests draw into a temporary folder)
    python bench/figures.py list                   # the figures in the data file, their dates and commands

The numbers live in figures.csv, one measured value a row, exactly as the bench command that measured it printed
it, with the date it was measured, the machine and that command. Nothing here holds a number of its own: a new
measurement is a new row (or an edited one) in the CSV, then `draw`, so the page's plots cannot drift from the data
they claim to show. Values stay text in the CSV so that "0.90" keeps the digits it was printed with; they become
floats only to be plotted.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "figures.csv"
IMG = HERE.parent / "docs" / "img"
COLUMNS = ["figure", "item", "measure", "value", "low", "high", "unit", "date", "machine", "command"]


@dataclass(frozen=True)
class Row:
    """One measured value, as the CSV holds it."""

    figure: str
    item: str
    measure: str
    value: str
    low: str
    high: str
    unit: str
    date: str
    machine: str
    command: str


def read(path: Path = DATA) -> list[Row]:
    """The data file's rows, in file order (the plots keep that order, so the CSV decides how bars are listed).

    A header other than COLUMNS is refused: a renamed column would otherwise draw empty plots without a word."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != COLUMNS:
            raise SystemExit(f"{path}: columns {reader.fieldnames}, expected {COLUMNS}")
        return [Row(**row) for row in reader]


def series(rows: list[Row], figure: str, measure: str) -> list[Row]:
    """The rows of one measure of one figure, in file order."""
    return [r for r in rows if r.figure == figure and r.measure == measure]


def items(rows: list[Row], figure: str) -> list[str]:
    """The figure's items (configurations, runs) in the order they first appear."""
    return list(dict.fromkeys(r.item for r in rows if r.figure == figure))


def dates(rows: list[Row], figure: str) -> str:
    """'measured 2026-12-04' or 'measured 2026-12-04 to 2026-12-05': every plot says when its numbers are from."""
    days = sorted({r.date for r in rows if r.figure == figure})
    return f"measured {days[0]}" if len(days) == 1 else f"measured {days[0]} to {days[-1]}"


def machine(rows: list[Row], figure: str) -> str:
    """The machine(s) the figure was measured on, for the plot's footnote."""
    return "; ".join(dict.fromkeys(r.machine for r in rows if r.figure == figure))


def _pyplot():
    """matplotlib without a display (the plots are drawn on servers and in tests)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _footer(fig, rows: list[Row], figure: str) -> None:
    fig.text(0.01, 0.01, f"{machine(rows, figure)}; {dates(rows, figure)}", fontsize=8, color="0.35")


def _legend_below(ax, offset: float = -0.16) -> None:
    """The legend under the axes (and their label, `offset` below them), where it cannot hide a bar or its value."""
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, offset), ncol=2, fontsize=8, frameon=False)


def _ratio_bars(ax, labels: list[str], groups: list[tuple[str, list[Row]]], colors: list[str]) -> None:
    """Horizontal bars, one group per label, with min-max whiskers where the CSV has them and the value beside each.

    Labels run top to bottom in file order."""
    height = 0.8 / len(groups)
    for g, ((name, measured), color) in enumerate(zip(groups, colors, strict=True)):
        by_item = {r.item: r for r in measured}
        for i, label in enumerate(labels):
            row = by_item.get(label)
            if row is None:
                continue
            y = i + (g - (len(groups) - 1) / 2) * height
            value = float(row.value)
            err = None
            if row.low and row.high:
                err = [[value - float(row.low)], [float(row.high) - value]]
            ax.barh(y, value, height=height * 0.9, color=color, xerr=err, capsize=3, label=name if i == 0 else None)
            ax.text(float(row.high or row.value), y, f" {row.value}×", va="center", fontsize=8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()


def draw_pfl_speed(rows: list[Row], out: Path) -> Path:
    """fedsim's time over pfl-research's per configuration: the steady round and the whole run, 1.0× marked."""
    plt = _pyplot()
    labels = items(rows, "pfl-speed")
    fig, ax = plt.subplots(figsize=(8, 5.4))
    groups = [
        ("steady round (median of pairs; whiskers: min-max)", series(rows, "pfl-speed", "steady round")),
        ("whole run, launch to exit", series(rows, "pfl-speed", "whole run")),
    ]
    _ratio_bars(ax, labels, groups, ["tab:blue", "tab:orange"])
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="1.0×: as fast as pfl")
    ax.set_xlabel("fedsim time / pfl-research time (×; below 1.0 fedsim is faster)")
    ax.set_title("Speed against pfl-research (pfl in its faster layout)")
    ax.set_xlim(0, max(float(r.high or r.value) for _, s in groups for r in s) * 1.2)
    _legend_below(ax)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _footer(fig, rows, "pfl-speed")
    return _save(fig, out / "bench-pfl-speed.png")


def draw_pfl_memory(rows: list[Row], out: Path) -> Path:
    """Peak PSS of the whole process tree, fedsim against pfl in one process and in two workers, in MB."""
    plt = _pyplot()
    labels = items(rows, "pfl-memory")
    measures = list(dict.fromkeys(r.measure for r in rows if r.figure == "pfl-memory"))
    fig, ax = plt.subplots(figsize=(8, 4.8))
    width = 0.8 / len(measures)
    for m, (measure, color) in enumerate(zip(measures, ["tab:blue", "tab:gray", "tab:green"], strict=False)):
        by_item = {r.item: r for r in series(rows, "pfl-memory", measure)}
        xs = [i + (m - (len(measures) - 1) / 2) * width for i in range(len(labels))]
        values = [float(by_item[label].value) for label in labels]
        bars = ax.bar(xs, values, width=width * 0.9, color=color, label=measure)
        ax.bar_label(bars, [by_item[label].value for label in labels], fontsize=7)
    ax.set_xticks(range(len(labels)), [label.replace(", ", "\n") for label in labels])
    ax.set_ylabel("peak PSS of all the run's processes (MB)")
    ax.set_title("Memory against pfl-research (Ray's processes included for fedsim)")
    ax.legend(fontsize=8)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _footer(fig, rows, "pfl-memory")
    return _save(fig, out / "bench-memory.png")


def draw_collection(rows: list[Row], out: Path) -> Path:
    """A collection's wall time over its budget, per repeat and per way of running it, the budget at 1.0×."""
    plt = _pyplot()
    measured = series(rows, "collection", "wall / budget")
    labels = [r.item for r in measured]
    fig, ax = plt.subplots(figsize=(9, 5))
    colors = ["tab:red" if "process per run" in r.item else "tab:blue" for r in measured]
    bars = ax.barh(range(len(labels)), [float(r.value) for r in measured], color=colors)
    ax.bar_label(bars, [f" {r.value}×" for r in measured], fontsize=8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="1.0×: the budget")
    ax.set_xlabel("collection wall time / budget (×)\nbudget: 1.25 × its rounds' time + one solo run's fixed cost")
    ax.set_title("A collection's overhead")
    ax.set_xlim(0, max(float(r.value) for r in measured) * 1.2)
    _legend_below(ax, offset=-0.24)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    _footer(fig, rows, "collection")
    return _save(fig, out / "bench-collection.png")


def draw_robust_cost(rows: list[Row], out: Path) -> Path:
    """Each attack's or robust step's cross-device round over FedAvg's unattacked round, log scale (NNM is 11×)."""
    plt = _pyplot()
    measured = series(rows, "robust-cost", "x FedAvg unattacked")
    fig, ax = plt.subplots(figsize=(8, 6))
    colors = ["tab:green" if float(r.value) <= 1.10 else "tab:purple" for r in measured]
    bars = ax.barh(range(len(measured)), [float(r.value) for r in measured], color=colors)
    ax.bar_label(bars, [f" {r.value}×" for r in measured], fontsize=8)
    # Rows measured against another FedAvg run than the first row say so, as the page's table does.
    labels = [f"{r.item}\n({r.unit.split('(', 1)[1]}" if "(" in r.unit else r.item for r in measured]
    ax.set_yticks(range(len(measured)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="1.0×: FedAvg, no attack")
    ax.axvline(1.10, color="tab:red", linestyle=":", linewidth=1, label="1.10×: the target")
    ax.set_xlabel("steady round time / FedAvg's unattacked round (×, log scale)")
    ax.set_title("What an attack or a robust step adds to a cross-device round")
    ax.set_xlim(0.8, max(float(r.value) for r in measured) * 2)
    ticks = [1, 1.5, 2, 3, 5, 10, 20]
    ax.set_xticks(ticks, [f"{t:g}×" for t in ticks])
    ax.minorticks_off()
    _legend_below(ax)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _footer(fig, rows, "robust-cost")
    return _save(fig, out / "bench-robust-cost.png")


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


# A figure with no rows in the data file (the GPU's, until a GPU measures it) draws nothing: no plot of nothing.
DRAWERS: dict[str, Callable[[list[Row], Path], Path]] = {
    "pfl-speed": draw_pfl_speed,
    "pfl-memory": draw_pfl_memory,
    "collection": draw_collection,
    "robust-cost": draw_robust_cost,
}


def draw(data: Path = DATA, out: Path = IMG) -> list[Path]:
    """Every plot whose figure has rows in `data`, written into `out`; the paths written."""
    rows = read(data)
    unknown = sorted({r.figure for r in rows} - set(DRAWERS))
    if unknown:
        raise SystemExit(f"{data}: no plot for figures {unknown}; add a drawer to bench/figures.py")
    return [drawer(rows, out) for figure, drawer in DRAWERS.items() if any(r.figure == figure for r in rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    draw_parser = sub.add_parser("draw", help="draw every plot from the data file")
    draw_parser.add_argument("--data", type=Path, default=DATA)
    draw_parser.add_argument("--out", type=Path, default=IMG)
    list_parser = sub.add_parser("list", help="the figures in the data file, their dates and commands")
    list_parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    if args.command == "draw":
        for path in draw(args.data, args.out):
            print(path)
    else:
        rows = read(args.data)
        for figure in dict.fromkeys(r.figure for r in rows):
            print(f"{figure}: {dates(rows, figure)}")
            for command in dict.fromkeys(r.command for r in rows if r.figure == figure):
                print(f"    {command}")


if __name__ == "__main__":
    main()

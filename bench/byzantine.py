"""The Byzantine study (docs/benchmarks/byzantine.md): the papers' claims on IMDB, each judged by paired contrasts.

    python bench/byzantine.py run --root DIR       # six resumable collections, seeds chosen by precision
    python bench/byzantine.py tables --root DIR    # the page's tables (markdown on stdout) and its figures

Each collection sweeps the cells some claims need (GRIDS says which), starts from seeds 0, 1 and 2, compares
each configuration with its baselines pair by pair over the seeds (the mean central accuracy of the last five
rounds), and adds seeds only where a contrast is inconclusive at the margin of 0.03, up to 10, and only while
they can decide it (`run_and_collect.py --until-conclusive --futility`). `tables` gathers every run of the six
into one set of cells (a cell run in two collections with one seed is one run: runs are deterministic, and the
tables check it) and judges each claim by its paired contrasts, Holm-adjusted over the claims table.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from common import IMDB, ROOT

from fedsim.collections.contrasts import Analysis, contrasts
from fedsim.collections.metric import CONVERGED_BELOW, Metric, gain_per_round
from fedsim.config.overrides import config_pairs

SEEDS = ["0", "1", "2"]
MAX_SEEDS, BATCH, MARGIN, METRIC = 10, 2, 0.03, "last:5"
DIRICHLET = ["partition=dirichlet", "partition.min_partition_size=20"]
IID = ["partition=iid"]
PAPERS = ["fedavg", "fedmedian", "trimmed_mean", "krum", "multikrum", "bulyan"]  # Shejwalkar & Houmansadr's
ROBUST = [*PAPERS, "centered_clipping", "geometric_median"]


@dataclass(frozen=True)
class Grid:
    """One collection of the study: its shared overrides, its sweeps, its baselines, and the claims it serves."""

    name: str
    overrides: tuple[str, ...]
    sweeps: tuple[str, ...]
    baselines: tuple[str, ...]
    serves: str


GRIDS = [
    Grid(
        "dir-attacks",
        (*DIRICHLET,),
        (f"strategy={','.join(PAPERS)}", "attack=none,label_flip,sign_flip,alie,minmax,minsum"),
        ("attack=none", "attack=alie"),
        "ALIE against Krum, the trimmed mean and Bulyan (label skew); Min-Max and Min-Sum against ALIE, label "
        "flipping and sign flipping; the main heatmap",
    ),
    Grid(
        "dir-ipm",
        (*DIRICHLET,),
        ("strategy=fedmedian,krum", "attack=none,ipm_small,ipm_large"),
        ("attack=none",),
        "IPM against the median and Krum",
    ),
    Grid(
        "dir-robust",
        (*DIRICHLET,),
        ("strategy=fedavg,fedmedian,trimmed_mean,centered_clipping,geometric_median", "attack=none,mimic"),
        ("strategy=fedavg", "attack=none"),
        "Mimic against the aggregators its paper names; centered clipping and the geometric median against FedAvg "
        "without an attack (label skew; Krum, Multi-Krum and Bulyan's cells are dir-attacks')",
    ),
    Grid(
        "iid",
        (*IID,),
        ("strategy=fedavg,trimmed_mean,krum,bulyan", "attack=none,alie"),
        ("strategy=fedavg", "attack=none"),
        "ALIE against Krum, the trimmed mean and Bulyan on IID data, as its paper ran it; the same aggregators "
        "against FedAvg on IID data, the control of the heterogeneity claim",
    ),
    Grid(
        "bucketing",
        (*DIRICHLET, "strategy=centered_clipping"),
        ("pre=none,bucketing", "attack=none,mimic"),
        ("pre=none",),
        "bucketing against Mimic",
    ),
    Grid(
        "nnm-arc",
        (*DIRICHLET, "strategy=trimmed_mean"),
        ("pre=none,nnm,arc", "attack=none,alie,ipm_large,minmax,mimic"),
        ("pre=none",),
        "NNM and ARC in front of the trimmed mean",
    ),
]


def command(grid: Grid, root: Path) -> list[str]:
    words = ["run_and_collect.py", "--seeds", *SEEDS, "--root", str(root), "--name", f"byzantine-{grid.name}"]
    for sweep in grid.sweeps:
        words += ["--sweep", sweep]
    for baseline in grid.baselines:
        words += ["--baseline", baseline]
    words += ["--margin", str(MARGIN), "--metric", METRIC, "--until-conclusive", "--max-seeds", str(MAX_SEEDS)]
    words += ["--batch", str(BATCH), "--futility"]
    return [*words, "--", "experiment=byzantine", *grid.overrides, f"data.path={IMDB}"]


def run(root: Path, only: list[str] | None) -> None:
    """Each grid's collection in turn (rerun to continue); every invocation's time is kept in ROOT/timers.json: the
    collection's own timer (its `done in ...` line) and, for one cut off before it printed that, the time from its
    start to its end."""
    for grid in GRIDS:
        if only and grid.name not in only:
            continue
        words = command(grid, root)
        print("python " + " ".join(words), flush=True)
        started, done = time.time(), None
        proc = subprocess.Popen([sys.executable, *words], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            for line in proc.stdout:
                print(line, end="", flush=True)
                done = line.strip() if line.startswith("done in ") else done
        finally:
            code = proc.wait()
            record_time(root, grid.name, {"started": started, "elapsed_s": time.time() - started, "done": done})
        if code not in (0, 1):
            raise SystemExit(f"{grid.name}: run_and_collect ended with {code}")


def record_time(root: Path, name: str, entry: dict) -> None:
    path = root / "timers.json"
    timers = json.loads(path.read_text()) if path.exists() else {}
    timers.setdefault(name, []).append(entry)
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(timers, indent=1))


# ----------------------------------------------------------------------------------------------- the cells


def cell_of(config: str) -> str:
    """A run's cell, whatever collection it ran in: `partition strategy pre attack` (pre `none` when absent)."""
    pairs = config_pairs(config)
    return cell(pairs["partition"], pairs.get("strategy", "fedavg"), pairs.get("attack", "none"), pairs.get("pre"))


def cell(partition: str, strategy: str, attack: str = "none", pre: str | None = None) -> str:
    return f"partition={partition} strategy={strategy} pre={pre or 'none'} attack={attack}"


def gathered(root: Path) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """Every completed run of the study as (cell, seed, value, collection) with the metric's value; the rounds of
    FedAvg without an attack on label-skewed data; and how many runs were made in two collections (checked equal)."""
    metric, frames, fedavg_rounds, seen = Metric.parse(METRIC), [], [], set()
    for grid in GRIDS:
        path = root / f"byzantine-{grid.name}"
        if not (path / "runs.csv").exists():
            continue
        runs, rounds = pd.read_csv(path / "runs.csv"), pd.read_csv(path / "rounds.csv")
        done = runs[runs.status == "completed"].copy()
        done["value"] = metric.of_runs(done, rounds).to_numpy()
        done["cell"] = done.config.map(cell_of)
        done["collection"] = grid.name
        frames.append(done[["cell", "seed", "value", "collection", "wall_time_s", "run_id"]])
        clean = done[(done.cell == cell("dirichlet", "fedavg")) & ~done.seed.isin(seen)]  # each seed once
        seen.update(clean.seed)
        mine = rounds[rounds.run_id.isin(clean.run_id)].copy()
        mine["run_id"] += 10**6 * len(fedavg_rounds)  # run ids are each collection's own
        fedavg_rounds.append(mine)
    runs = pd.concat(frames, ignore_index=True)
    twice = runs[runs.duplicated(["cell", "seed"], keep=False)]
    spread = twice.groupby(["cell", "seed"])["value"].agg(lambda v: v.max() - v.min())
    assert (spread == 0).all(), f"a cell's run differs between collections: {spread[spread != 0]}"
    return runs, pd.concat(fedavg_rounds, ignore_index=True), int(len(twice) - len(spread))


# ----------------------------------------------------------------------------------------------- the claims


@dataclass(frozen=True)
class Claim:
    """A paper's claim and the contrasts that test it: (cell, its baseline cell, the verdict the claim predicts:
    worse, better, equivalent, or `not worse`, which equivalence or better meets)."""

    text: str
    paper: str
    pairs: tuple[tuple[str, str, str], ...]


D, I_ = "dirichlet", "iid"
ATTACKED = ("alie", "ipm_large", "minmax", "mimic")
CLAIMS = [
    Claim(
        "ALIE, with 20% of the workers, defeats Krum, the trimmed mean and Bulyan",
        "Baruch, Baruch & Goldberg, NeurIPS 2019",
        tuple((cell(p, s, "alie"), cell(p, s), "worse") for p in (I_, D) for s in ("krum", "trimmed_mean", "bulyan")),
    ),
    Claim(
        "IPM defeats the coordinate-wise median and Krum",
        "Xie, Koyejo & Gupta, UAI 2019",
        tuple((cell(D, s, a), cell(D, s), "worse") for s in ("fedmedian", "krum") for a in ("ipm_small", "ipm_large")),
    ),
    Claim(
        "Min-Max and Min-Sum hurt more than earlier attacks: ALIE, as their authors compared, label and sign flips",
        "Shejwalkar & Houmansadr, NDSS 2021",
        tuple(
            (cell(D, s, a), cell(D, s, b), "worse")
            for s in PAPERS
            for a in ("minmax", "minsum")
            for b in ("alie", "label_flip", "sign_flip")
        ),
    ),
    Claim(
        "Robust aggregators fail on heterogeneous data even with no attacker: worse than FedAvg under label skew, "
        "not on IID data (there: the trimmed mean, Krum and Bulyan)",
        "Karimireddy, He & Jaggi, ICML 2021",
        (
            *((cell(D, s), cell(D, "fedavg"), "worse") for s in ROBUST[1:]),
            *((cell(I_, s), cell(I_, "fedavg"), "equivalent") for s in ("trimmed_mean", "krum", "bulyan")),
        ),
    ),
    Claim(
        "Centered clipping repairs that failure",
        "Karimireddy, He & Jaggi, ICML 2021",
        ((cell(D, "centered_clipping"), cell(D, "fedavg"), "equivalent"),),
    ),
    Claim(
        "Mimic exploits heterogeneity, and bucketing answers it",
        "Karimireddy, He & Jaggi, ICLR 2022",
        (
            *((cell(D, s, "mimic"), cell(D, s), "worse") for s in ("fedavg", "fedmedian", "trimmed_mean", *ROBUST[6:])),
            (cell(D, "centered_clipping", "mimic", "bucketing"), cell(D, "centered_clipping", "mimic"), "better"),
            (cell(D, "centered_clipping", "none", "bucketing"), cell(D, "centered_clipping"), "not worse"),
        ),
    ),
    *(
        Claim(
            f"{name} makes robust aggregators hold under heterogeneity",
            paper,
            (
                (cell(D, "trimmed_mean", "none", pre), cell(D, "trimmed_mean"), "not worse"),
                *((cell(D, "trimmed_mean", a, pre), cell(D, "trimmed_mean", a), "better") for a in ATTACKED),
            ),
        )
        for name, paper, pre in (("NNM", "Allouah et al., AISTATS 2023", "nnm"), ("ARC", "Allouah et al., 2024", "arc"))
    ),
]


def agrees(verdict: str, claimed: str) -> str:
    """`as claimed`, `not as claimed`, or `open` (inconclusive)."""
    if verdict == "inconclusive":
        return "open"
    met = verdict in ("equivalent", "better") if claimed == "not worse" else verdict == claimed
    return "as claimed" if met else "not as claimed"


def judged(runs: pd.DataFrame, pairs: list[tuple[str, str]]) -> pd.DataFrame:
    """The paired contrasts of `pairs` (each once) over the study's runs, Holm-adjusted over them."""
    values = runs.drop_duplicates(["cell", "seed"]).rename(columns={"cell": "config"})[["config", "seed", "value"]]
    analysis = Analysis(metric=Metric.parse(METRIC), margin=MARGIN)
    return contrasts(values, analysis, list(dict.fromkeys(pairs))).set_index(["config", "baseline"])


def short(a: str, b: str) -> str:
    """`partition=dirichlet strategy=krum pre=none attack=alie` against its baseline: `Dir. krum: alie vs none`."""
    x, y = config_pairs(a), config_pairs(b)
    where = "Dir." if x["partition"] == "dirichlet" else "IID"
    agg = x["strategy"] if x["pre"] == "none" else f"{x['pre']}+{x['strategy']}"
    changed = [k for k in ("strategy", "pre", "attack") if x[k] != y[k]]
    if changed == ["attack"]:
        return f"{where} {agg}: {x['attack']} vs {y['attack']}"
    base = y["strategy"] if y["pre"] == "none" else f"{y['pre']}+{y['strategy']}"
    return f"{where} {agg} vs {base}" + ("" if x["attack"] == "none" else f" ({x['attack']})")


def needs_text(row: pd.Series) -> str:
    return f"{int(row.seeds_needed)} pairs" if np.isfinite(row.seeds_needed) else "2 pairs to estimate"


def claims_table(table: pd.DataFrame) -> str:
    """One row per contrast, grouped by claim: the difference with its interval, the pairs, the verdict (with the
    pairs an open one needs) and whether it is what the claim predicts; each claim's tally first."""
    lines = [
        "| claim (paper) | contrast | claimed | paired difference [95% CI] | pairs | verdict | |",
        "|---" * 7 + "|",
    ]
    for claim in CLAIMS:
        outcomes = [agrees(table.loc[(a, b)].verdict, claimed) for a, b, claimed in claim.pairs]
        tally = ", ".join(f"{outcomes.count(o)} {o}" for o in ("as claimed", "not as claimed", "open") if o in outcomes)
        for i, (a, b, claimed) in enumerate(claim.pairs):
            row = table.loc[(a, b)]
            interval = f"[{row.ci95_low:+.3f}, {row.ci95_high:+.3f}]" if np.isfinite(row.ci95_low) else ""
            verdict = row.verdict + (f" (needs {needs_text(row)})" if row.verdict == "inconclusive" else "")
            head = f"**{claim.text}** ({claim.paper}): {tally}" if i == 0 else ""
            lines.append(
                f"| {head} | {short(a, b)} | {claimed} | {row.mean_diff:+.3f} {interval} | {int(row.n_pairs)} | "
                f"{verdict} | {outcomes[i]} |"
            )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- the grids


ROWS = [
    ("fedavg", None),
    ("fedmedian", None),
    ("trimmed_mean", None),
    ("krum", None),
    ("multikrum", None),
    ("bulyan", None),
    ("centered_clipping", None),
    ("geometric_median", None),
    ("trimmed_mean", "nnm"),
    ("trimmed_mean", "arc"),
    ("centered_clipping", "bucketing"),
]
ATTACKS = ["label_flip", "sign_flip", "alie", "ipm_small", "ipm_large", "minmax", "minsum", "mimic"]
MARKS = {"worse": "▼", "better": "▲", "equivalent": "=", "inconclusive": "?"}


def grid_contrasts(runs: pd.DataFrame, partition: str) -> pd.DataFrame:
    """Each attack against no attack, for every aggregator and attack the study ran on `partition`; Holm over the
    grid."""
    have = set(runs.cell)
    pairs = [
        (cell(partition, s, a, pre), cell(partition, s, "none", pre))
        for s, pre in ROWS
        for a in ATTACKS
        if cell(partition, s, a, pre) in have and cell(partition, s, "none", pre) in have
    ]
    return judged(runs, pairs)


def grid_markdown(table: pd.DataFrame, partition: str) -> str:
    attacks = [a for a in ATTACKS if any(config_pairs(c)["attack"] == a for c, _ in table.index)]
    lines = ["| aggregator | " + " | ".join(attacks) + " |", "|---|" + "---|" * len(attacks)]
    for s, pre in ROWS:
        cells = []
        for a in attacks:
            key = (cell(partition, s, a, pre), cell(partition, s, "none", pre))
            if key not in table.index:
                cells.append("")
                continue
            row = table.loc[key]
            cells.append(f"{row.mean_diff:+.3f} {MARKS[row.verdict]} ({int(row.n_pairs)})")
        if any(cells):
            lines.append(f"| {s if pre is None else pre + '+' + s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heatmap(table: pd.DataFrame, partition: str, path: Path) -> None:
    """The grid as a heatmap: aggregator x attack, colour the paired difference from no attack, each cell marked by
    its verdict (▼ worse, ▲ better, = equivalent, ? inconclusive) and its pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = [a for a in ATTACKS if any(config_pairs(c)["attack"] == a for c, _ in table.index)]
    rows = [
        (s, pre) for s, pre in ROWS if any(cell(partition, s, a, pre) == c for c, _ in table.index for a in attacks)
    ]
    grid = np.full((len(rows), len(attacks)), np.nan)
    fig, ax = plt.subplots(figsize=(1.1 * len(attacks) + 3, 0.5 * len(rows) + 1.5))
    for i, (s, pre) in enumerate(rows):
        for j, a in enumerate(attacks):
            key = (cell(partition, s, a, pre), cell(partition, s, "none", pre))
            if key in table.index:
                row = table.loc[key]
                grid[i, j] = row.mean_diff
                ax.text(j, i, f"{row.mean_diff:+.2f}{MARKS[row.verdict]}\n{int(row.n_pairs)}", ha="center",
                        va="center", fontsize=7)  # fmt: skip
    limit = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1
    image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [s if pre is None else f"{pre}+{s}" for s, pre in rows], fontsize=8)
    name = "label skew (Dirichlet 0.5)" if partition == D else "IID"
    ax.set_title(
        f"{name}: paired difference from no attack ({METRIC}); ▼ worse ▲ better = equivalent ? open", fontsize=9
    )
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def forest(table: pd.DataFrame, pairs: list[tuple[str, str]], path: Path) -> None:
    """The claims' contrasts, each with its 95% interval and verdict, over the margin band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"worse": "tab:red", "better": "tab:green", "equivalent": "tab:blue", "inconclusive": "tab:gray"}
    fig, ax = plt.subplots(figsize=(8, 1 + 0.2 * len(pairs)))
    ax.axvspan(-MARGIN, MARGIN, color="tab:blue", alpha=0.1)
    ax.axvline(0, color="black", linewidth=0.8)
    for y, key in enumerate(pairs):
        row = table.loc[key]
        low, high = row.mean_diff - row.ci95_low, row.ci95_high - row.mean_diff
        ax.errorbar(row.mean_diff, y, xerr=[[low], [high]] if np.isfinite(low) else None, fmt="o", markersize=3,
                    color=colours[row.verdict], capsize=2)  # fmt: skip
    ax.set_yticks(range(len(pairs)), [short(a, b) for a, b in pairs], fontsize=6)
    ax.invert_yaxis()
    for name, colour in colours.items():
        ax.plot([], [], "o", color=colour, label=name)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_xlabel(f"paired difference in central accuracy ({METRIC}), 95% CI; band: ±{MARGIN}")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def counts(table: pd.DataFrame) -> str:
    by = table.verdict.value_counts()
    conclusive = int(by.get("worse", 0) + by.get("better", 0) + by.get("equivalent", 0))
    open_ = table[table.verdict == "inconclusive"]
    text = (
        f"{conclusive} of {len(table)} conclusive ({int(by.get('worse', 0))} worse, {int(by.get('better', 0))} "
        f"better, {int(by.get('equivalent', 0))} equivalent)"
    )
    if len(open_):
        need = open_.seeds_needed.dropna()
        text += f"; {len(open_)} inconclusive at {int(open_.n_pairs.min())} to {int(open_.n_pairs.max())} pairs"
        text += f", needing {int(need.min())} to {int(need.max())} pairs" if len(need) else ""
    return text


def convergence(rounds: pd.DataFrame) -> str:
    """FedAvg without an attack under label skew: mean central accuracy by round, and the gain a round over the
    last five rounds (each run's least-squares slope, then their mean)."""
    mean = rounds.groupby("round")["central_accuracy"].mean()
    shown = [r for r in (1, 5, 10, 15, 20, 21, 22, 23, 24, 25) if r in mean.index]
    gain = gain_per_round(rounds)
    return (
        "| round | " + " | ".join(map(str, shown)) + " |\n|---|" + "---|" * len(shown) + "\n| accuracy | "
        + " | ".join(f"{mean[r]:.3f}" for r in shown) + " |\n\n"
        f"Gain a round over the last five rounds: {gain.mean():+.4f} (over {len(gain)} runs; from {gain.min():+.4f} "
        f"to {gain.max():+.4f}); under {CONVERGED_BELOW}: {bool(gain.mean() < CONVERGED_BELOW)}."
    )  # fmt: skip


def wall_time(root: Path, runs: pd.DataFrame) -> str:
    """Each collection's invocations: their own timers (`done in`), or for one cut off, its start to its end."""
    timers = json.loads((root / "timers.json").read_text()) if (root / "timers.json").exists() else {}
    lines = ["| collection | invocations | their time | runs completed | their runs' wall time |", "|---" * 5 + "|"]
    total = 0.0
    for grid in GRIDS:
        entries = timers.get(grid.name, [])
        seconds = sum(duration(t["done"]) if t["done"] else t["elapsed_s"] for t in entries)
        total += seconds
        mine = runs[runs.collection == grid.name]
        minutes = mine.wall_time_s.sum() / 60
        lines.append(f"| {grid.name} | {len(entries)} | {seconds / 60:.1f} min | {len(mine)} | {minutes:.1f} min |")
    lines.append(f"| all | | {total / 60:.1f} min | {len(runs)} | {runs.wall_time_s.sum() / 60:.1f} min |")
    return "\n".join(lines)


def duration(done: str) -> float:
    """Seconds from a collection's `done in 1h02m03s: ...` line."""
    text = re.match(r"done in (\S+):", done).group(1)
    units = {"h": 3600, "m": 60, "s": 1}
    return float(sum(float(v) * units[u] for v, u in re.findall(r"([\d.]+)([hms])", text)))


def grids_table() -> str:
    """The collections: what each sweeps, compares and serves."""
    lines = ["| collection | cells | sweeps (and shared overrides) | baselines | serves |", "|---" * 5 + "|"]
    for grid in GRIDS:
        cells = int(np.prod([len(sweep.split("=", 1)[1].split(",")) for sweep in grid.sweeps]))
        shared = " ".join(o for o in grid.overrides if not o.startswith("partition.min"))
        sweeps = "; ".join(f"`{sweep}`" for sweep in grid.sweeps) + f" ({shared})"
        baselines = ", ".join(f"`{b}`" for b in grid.baselines)
        lines.append(f"| byzantine-{grid.name} | {cells} | {sweeps} | {baselines} | {grid.serves} |")
    return "\n".join(lines)


def tables(root: Path, figures: Path) -> None:
    print("## Cells\n\n" + grids_table() + "\n")
    runs, fedavg_rounds, repeated = gathered(root)
    print(f"{len(runs)} completed runs in {runs.cell.nunique()} cells; {repeated} runs made in two collections, "
          "equal to the bit\n")  # fmt: skip
    print("## Convergence\n\n" + convergence(fedavg_rounds) + "\n")
    figures.mkdir(parents=True, exist_ok=True)
    for partition in (D, I_):
        grid = grid_contrasts(runs, partition)
        heatmap(grid, partition, figures / f"byzantine-{partition}.png")
        print(f"## Grid: {partition} ({counts(grid)}; Holm over the grid)\n\n{grid_markdown(grid, partition)}\n")
    pairs = list(dict.fromkeys((a, b) for claim in CLAIMS for a, b, _ in claim.pairs))
    table = judged(runs, pairs)
    forest(table, pairs, figures / "byzantine-claims.png")
    print(f"## Claims ({counts(table)}; Holm over the table's {len(table)} contrasts)\n\n{claims_table(table)}\n")
    print("## Wall time\n\n" + wall_time(root, runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "tables"])
    parser.add_argument("--root", type=Path, required=True, help="where the collections live (outside the work tree)")
    parser.add_argument("--only", nargs="+", choices=[g.name for g in GRIDS], help="run these grids only")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "img", help="where tables draws its figures")
    args = parser.parse_args()
    if args.action == "run":
        run(args.root.resolve(), args.only)
    else:
        tables(args.root.resolve(), args.figures)


if __name__ == "__main__":
    main()

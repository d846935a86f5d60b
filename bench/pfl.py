"""fedsim against pfl-research (Apple's `pfl`), side by side on identical inputs, each timed as its users run it.

    python bench/pfl.py                          # every config below, 3 pairs each
    python bench/pfl.py --configs bow-10 --pairs 3 [-- overrides for fedsim and the export]

pfl 0.6 needs Python < 3.13 and dp-accounting < 0.6, which conflict with flwr[dp], so it runs in
its own venv (`bench/.venv-pfl`, made from bench/pfl_peer/requirements.txt on first use). For each
config the script exports, from fedsim's own cache: the seeded initial weights, every client's
train and validation features, the clients of every round, each client's row order and torch
seed. pfl_peer/run.py trains on exactly that (same model, Adam re-created per local round, batch
size, epochs, FedAvg weighted by examples, central evaluation on the test split), so fedsim and pfl
in both its layouts must reach the same final central accuracy, which is checked.

How each side is timed, and why. fedsim runs as a user runs it, `python main.py <overrides>` in a
subprocess; pfl runs pfl_peer/run.py in a subprocess, both in one process (a torch thread per core)
and as N torch.distributed workers (`--pfl-workers`), and each pair compares fedsim with the faster
pfl layout (by steady s/round): a peer in a layout slower than it allows flatters fedsim. Both
sides get the same stamps, absolute `time.time()`: the launch, just before the process starts; each
round's end, when fedsim's rounds.csv gets the round's row (polled every 0.05 s) or when pfl prints
the round's line (its own stamp); the exit. Steady s/round is the mean gap between consecutive round
ends from round 2 on; round 1 end is its stamp minus the launch (start-up included); wall is exit
minus launch; peak PSS is that of all the run's processes (Ray's included), sampled every 5 s.

Each pair runs fedsim, then pfl in one process, then pfl in N workers; pairs follow one another.
While each run lasts, the CPU time of every process outside it (and outside this script) is sampled
from /proc: a peer timed while something else takes cores is slowed by what has nothing to do with
it, which flatters fedsim (or, the other way round, penalizes it). A pair in which any run saw more
than `--max-other-load` cores of other load is dropped and run again, at most `--max-retries` extra
times per config; a contended pair with no retries left is kept and marked. A pair in which a run
exited non-zero is run again too, out of the same retries, and counted as failed. The printed Markdown
table gives, per config, medians over the kept pairs and the per-pair ratios fedsim / pfl's faster
layout as median (min-max).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from statistics import median

import numpy as np
from common import IMDB, ROOT, RUN_MARK, MemoryPeaks, MemorySampler, OtherLoad, RunProcesses, compose, machine, table

from fedsim.rundir import read_info

VENV = ROOT / "bench" / ".venv-pfl"
REQUIREMENTS = ROOT / "bench" / "pfl_peer" / "requirements.txt"
FAST = ["scrutiny=false", "archive.mode=none"]
CONFIGS = {
    "bow-10": ["model=bow", "num_clients=10", "num_rounds=5", *FAST],
    "bow-10-scrutiny": ["model=bow", "num_clients=10", "num_rounds=5", "archive.mode=none"],  # the default
    "bow-1000": [
        "model=bow",
        "num_clients=1000",
        "num_rounds=5",
        "strategy.fraction_train=0.05",
        "strategy.fraction_evaluate=0.05",
        *FAST,
    ],
    "minilm": [
        "model=minilm",
        "num_clients=4",
        "num_rounds=3",
        "data.train_size=400",
        "data.test_size=200",
        "data.max_length=64",
        *FAST,
    ],
    # conf/experiment/cross_device.yaml: 5,000 clients, 500 train per round, bow of 2^16 buckets, 100 rounds.
    "cross-device": ["experiment=cross_device", *FAST],
    # conf/experiment/cross_device_25k.yaml: 25,000 clients of one review, 2,500 train per round, central evaluation.
    "cross-device-25k": ["experiment=cross_device_25k", "num_rounds=5", *FAST],
}


def runs(python: str) -> bool:
    """Whether `python` is on PATH and starts (a pyenv shim of a version not installed does not)."""
    return shutil.which(python) is not None and subprocess.run([python, "-c", ""], capture_output=True).returncode == 0


def pfl_python() -> Path:
    """pfl's venv interpreter, making the venv first if needed (torch's CPU build before the rest)."""
    python = VENV / "bin" / "python"
    if python.exists():
        return python
    # 3.11 first: torch's CPU build on this project's machines is a file for Python 3.11.
    base = next((p for p in ("python3.11", "python3.12", "python3.10") if runs(p)), None)
    if base is None:
        sys.exit(
            "error: pfl needs Python 3.10-3.12 beside this one; allowed: python3.11, python3.12 or python3.10 on PATH"
        )
    subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "torch==2.13.0"], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    return python


# ----------------------------------------------------------------------------- the export


def subset(features, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Some rows of a fedsim feature table, as arrays of the same layout."""
    if hasattr(features, "indptr"):
        starts, ends = features.indptr[rows], features.indptr[rows + 1]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(ends - starts, out=indptr[1:])
        indices = (
            np.concatenate([features.indices[s:e] for s, e in zip(starts, ends)]) if len(rows) else features.indices[:0]
        )
        return {"indptr": indptr, "indices": indices, "labels": features.labels[rows]}
    return {"input_ids": features.input_ids[rows], "lengths": features.lengths[rows], "labels": features.labels[rows]}


def export(overrides: list[str], out: Path) -> dict:
    """Everything pfl_peer/run.py needs to do the run fedsim does with `overrides`, computed by fedsim's code."""
    import torch
    from omegaconf import OmegaConf
    from safetensors.numpy import save_file

    from fedsim.client.client import step_seed
    from fedsim.config.counts import Counts
    from fedsim.config.settings import DataSettings
    from fedsim.data.cache import load_features
    from fedsim.data.partition import partition_rows, train_val_split
    from fedsim.data.prepare import prepare_data
    from fedsim.run.experiment import load_model
    from fedsim.server.participation import EVALUATE, TRAIN, choose

    cfg = compose(overrides)
    prepared = prepare_data(DataSettings.of(cfg))
    features = load_features(prepared.train_file, prepared.kind)
    n, seed = int(cfg.num_clients), int(cfg.seed)
    clients, local = {}, {}
    for p in range(n):
        train_rows, val_rows = train_val_split(
            partition_rows(prepared.partition_file, p), prepared.val_fraction, prepared.seed, p
        )
        local[p] = train_rows
        for name, rows in (("train", train_rows), ("val", val_rows)):
            clients.update({f"c{p}/{name}/{k}": np.ascontiguousarray(v) for k, v in subset(features, rows).items()})
    test = load_features(prepared.test_file, prepared.kind)
    save_file(subset(test, np.arange(prepared.num_test)), str(out / "test.safetensors"))
    save_file(clients, str(out / "clients.safetensors"))

    counts = Counts.of(cfg)
    per_round, num_eval = counts.fit, counts.evaluate
    rounds = range(1, int(cfg.num_rounds) + 1)
    train = {r: choose(seed, r, TRAIN, per_round, n) for r in rounds}
    orders, seeds = {}, {}
    for r in rounds:
        for p in train[r]:
            # fedsim's Loader shuffles its global row ids with this seed; pfl gets the same order as local positions.
            seeds[f"{r}:{p}"] = step_seed(seed, r, p)
            order = np.random.default_rng(seeds[f"{r}:{p}"]).permutation(len(local[p]))
            assert np.array_equal(local[p][order], np.random.default_rng(seeds[f"{r}:{p}"]).permutation(local[p]))
            orders[f"r{r}/c{p}"] = order
    save_file(orders, str(out / "orders.safetensors"))

    torch.manual_seed(seed)  # as the server seeds its initial model
    model = load_model(cfg)
    save_file({k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, str(out / "init.safetensors"))
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    optimizer = OmegaConf.to_container(cfg.model.optimizer, resolve=True)
    meta = {
        "kind": prepared.kind,
        "num_clients": n,
        "num_rounds": int(cfg.num_rounds),
        "seeds": seeds,
        "train": {str(r): train[r] for r in rounds},
        "evaluate": {str(r): choose(seed, r, EVALUATE, num_eval, n) for r in rounds},
        "net": {"class": net.pop("_target_").rsplit(".", 1)[1], "kwargs": net},
        "optimizer": {
            "class": optimizer.pop("_target_").rsplit(".", 1)[1],
            "kwargs": {k: v for k, v in optimizer.items() if not k.startswith("_")},
        },
        "lr": float(cfg.client.lr),
        "batch_size": int(cfg.client.batch_size),
        "local_epochs": int(cfg.client.local_epochs),
        "threads": max(1, os.cpu_count() or 1),
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return meta


# ----------------------------------------------------------------------------- the runs


@dataclass
class Measured:
    """One measured process, as absolute stamps (`time.time()`): its launch, each round's end, its exit."""

    launched: float
    exited: float
    ends: dict[int, float]  # round -> stamp of its end
    memory: MemoryPeaks
    other_cpu_s: float  # CPU seconds that processes outside the run used while it ran
    output: str  # its stdout

    def figures(self, accuracy: float) -> dict:
        """The run's figures, computed the same way for both sides from its stamps."""
        stamps = [self.ends[r] for r in sorted(self.ends) if r > 0]
        wall = self.exited - self.launched
        return {
            "round_end_s": [t - self.launched for t in stamps],
            "steady_s": float(np.mean(np.diff(stamps))),  # rounds 2..R
            "round1_end_s": stamps[0] - self.launched,
            "wall_s": wall,
            "accuracy": accuracy,
            "pss_mb": self.memory.tree_pss,
            "rss_mb": self.memory.driver_rss,
            "other_load_cores": self.other_cpu_s / wall,
        }


class RoundWatch:
    """Stamps each round's end as the time its row appears in a fedsim run's rounds.csv (polled every 0.05 s)."""

    def __init__(self, path: Path) -> None:
        self.path, self.ends = path, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        offset, tail, column = 0, "", None
        while True:
            stopping = self._stop.is_set()
            if self.path.exists():
                with open(self.path, "rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                now, offset = time.time(), offset + len(chunk)
                lines = (tail + chunk.decode()).split("\n")
                tail = lines.pop()  # an incomplete row, if any
                for cells in csv.reader(lines):
                    if column is None:
                        column = cells.index("round")
                    elif cells:
                        self.ends.setdefault(int(cells[column]), now)
            if stopping:
                return
            self._stop.wait(0.05)

    def stop(self) -> dict[int, float]:
        self._stop.set()
        self._thread.join()
        return self.ends


class RunFailed(RuntimeError):
    """A run of a pair exited non-zero (pfl's two workers have aborted in torch's teardown after their last
    round): the pair is run again, as a contended one is."""


def measure(command: list[str], log: Path, rounds_csv: Path | None = None) -> Measured:
    """Runs `command` from the repository root as a process marked for RunProcesses (stdout to `log`.out,
    stderr to `log`.err), with its memory, the others' CPU and, given `rounds_csv`, its rounds' ends."""
    mark = uuid.uuid4().hex
    env = {**os.environ, "IMDB_PATH": IMDB, RUN_MARK: mark}
    watch = RoundWatch(rounds_csv) if rounds_csv is not None else None
    out, err = log.with_suffix(".out"), log.with_suffix(".err")
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        launched = time.time()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=stdout, stderr=stderr)
        processes = RunProcesses(process.pid, mark)
        memory, others = MemorySampler(process.pid, processes=processes), OtherLoad(processes)
        returncode = process.wait()
        exited = time.time()
    peaks, other_cpu_s = memory.stop(), others.stop()
    ends = watch.stop() if watch is not None else {}
    if returncode != 0:
        raise RunFailed(f"{' '.join(command)} exited {returncode}:\n{err.read_text()[-3000:]}")
    return Measured(launched, exited, ends, peaks, other_cpu_s, out.read_text())


def run_fedsim(overrides: list[str], run_dir: Path) -> dict:
    """`python main.py <overrides>` as a user runs it; a round ends when rounds.csv gets its row."""
    command = [sys.executable, "main.py", *overrides, f"hydra.run.dir={run_dir}"]
    run = measure(command, run_dir, rounds_csv=run_dir / "rounds.csv")
    return run.figures(float((read_info(run_dir) or {})["final_central_accuracy"]))


def run_pfl(python: Path, export_dir: Path, workers: int, log: Path) -> dict:
    """pfl_peer/run.py on an export, in one process or as `workers` torch.distributed workers; a round ends
    at the stamp of the line it prints for the round."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}"] if workers > 1 else []
    run = measure([str(python), *launcher, str(ROOT / "bench" / "pfl_peer" / "run.py"), str(export_dir)], log)
    rounds = [json.loads(line) for line in run.output.splitlines() if line.startswith("{")]
    run.ends = {r["round"]: r["time"] for r in rounds}
    return run.figures(rounds[-1]["central_accuracy"])


def layout(workers: int) -> str:
    return "1 process" if workers == 1 else f"{workers} workers"


def run_pair(
    name: str, overrides: list[str], python: Path, export_dir: Path, work: Path, attempt: int, args: argparse.Namespace
) -> dict:
    """fedsim, then pfl in one process, then pfl in `--pfl-workers` workers; the faster pfl layout counts."""
    base = work / f"{name}-{attempt}"
    base.mkdir()
    fedsim = run_fedsim(overrides, base / "fedsim")
    layouts = [1, args.pfl_workers] if args.pfl_workers > 1 else [1]
    pfl = {layout(n): run_pfl(python, export_dir, n, base / f"pfl-{n}") for n in layouts}
    for side, run in [("pfl " + k, v) for k, v in pfl.items()]:
        if len(run["round_end_s"]) != len(fedsim["round_end_s"]):
            raise RuntimeError(f"{side} ended {len(run['round_end_s'])} rounds, fedsim {len(fedsim['round_end_s'])}")
    faster = min(pfl, key=lambda k: pfl[k]["steady_s"])
    load = max(run["other_load_cores"] for run in [fedsim, *pfl.values()])
    return {
        "attempt": attempt,
        "fedsim": fedsim,
        "pfl": pfl,
        "faster": faster,
        "max_other_load_cores": load,
        "contended": load > args.max_other_load,
    }


def compare(name: str, overrides: list[str], python: Path, work: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """`--pairs` uncontended pairs (a contended or failed one is run again, at most `--max-retries` times),
    summed up."""
    export_dir = work / f"{name}-export"
    export_dir.mkdir()
    if export(overrides, export_dir)["num_rounds"] < 2:
        sys.exit("error: steady s/round needs at least 2 rounds")
    kept, dropped, failed, retries = [], [], [], args.max_retries
    while len(kept) < args.pairs:
        attempt = len(kept) + len(dropped) + len(failed) + 1
        try:
            pair = run_pair(name, overrides, python, export_dir, work, attempt, args)
        except RunFailed as exc:
            if retries == 0:
                raise
            retries -= 1
            failed.append(str(exc))
            print(f"{name} attempt {attempt}: {str(exc).splitlines()[0]} - failed, run again", flush=True)
            continue
        drop = pair["contended"] and retries > 0
        retries -= int(drop)
        (dropped if drop else kept).append(pair)
        runs = [("fedsim", pair["fedsim"]), *(("pfl " + k, v) for k, v in pair["pfl"].items())]
        print(
            f"{name} attempt {pair['attempt']}: "
            + "; ".join(
                f"{side} {r['steady_s']:.2f} s/round, acc {r['accuracy']:.5f}, other load {r['other_load_cores']:.2f}"
                for side, r in runs
            )
            + f"; faster pfl: {pair['faster']}"
            + (" - contended, dropped" if drop else " - contended, no retries left, kept" if pair["contended"] else ""),
            flush=True,
        )
    return summary(name, kept, dropped, len(failed)), {
        "overrides": overrides,
        "kept": kept,
        "dropped": dropped,
        "failed": failed,
    }


def summary(name: str, kept: list[dict], dropped: list[dict], failed: int) -> dict:
    """Medians over the kept pairs; ratios are fedsim / pfl's faster layout, per pair, then median (min-max)."""

    def faster(pair: dict) -> dict:
        return pair["pfl"][pair["faster"]]

    def med(values) -> float:
        return float(median(values))

    def cell(key: str) -> str:
        values = [pair["fedsim"][key] / faster(pair)[key] for pair in kept]
        return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    layouts = list(kept[0]["pfl"])
    named = Counter(pair["faster"] for pair in kept)
    accuracies = {run["accuracy"] for pair in kept + dropped for run in [pair["fedsim"], *pair["pfl"].values()]}
    contended = sum(pair["contended"] for pair in kept)
    pss = [med(pair["fedsim"]["pss_mb"] for pair in kept)]
    pss += [med(pair["pfl"][k]["pss_mb"] for pair in kept) for k in layouts]
    return {
        "config": name,
        "fedsim s/round": med(pair["fedsim"]["steady_s"] for pair in kept),
        "pfl s/round (faster layout)": f"{med(faster(pair)['steady_s'] for pair in kept):.3g} ("
        + ", ".join(f"{k}: {n} of {len(kept)}" if len(named) > 1 else k for k, n in named.most_common())
        + ")",
        "ratio": cell("steady_s"),
        "round 1 end s, fedsim / pfl": f"{med(pair['fedsim']['round1_end_s'] for pair in kept):.3g} / "
        f"{med(faster(pair)['round1_end_s'] for pair in kept):.3g}",
        "round 1 ratio": cell("round1_end_s"),
        "wall ratio": cell("wall_s"),
        f"peak PSS MB, fedsim / {' / '.join('pfl ' + k for k in layouts)}": " / ".join(f"{v:.0f}" for v in pss),
        "pairs kept / dropped": f"{len(kept)} / {len(dropped)}"
        + (f", {contended} contended" if contended else "")
        + (f", {failed} failed and rerun" if failed else ""),
        "max other load, cores": f"{max(pair['max_other_load_cores'] for pair in kept):.2f}",
        "accuracy identical": f"yes ({accuracies.pop():.5f})" if len(accuracies) == 1 else "no",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--pairs", type=int, default=3, help="kept pairs per config (fedsim, pfl's layouts)")
    parser.add_argument(
        "--pfl-workers",
        type=int,
        default=2,
        help="pfl's second layout: N torch.distributed workers (gloo), each with cores / N threads (1: none)",
    )
    parser.add_argument(
        "--max-other-load", type=float, default=0.25, help="cores other processes may use during a run of a pair"
    )
    parser.add_argument("--max-retries", type=int, default=3, help="contended pairs run again per config, at most")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("extra", nargs="*", help="overrides added to every config (after --)")
    args = parser.parse_args()
    python = pfl_python()
    print(f"Machine: {machine()}\n", flush=True)
    rows, every = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            row, every[name] = compare(name, CONFIGS[name] + args.extra, python, Path(tmp), args)
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows, "configs": every}, indent=1))
    print(table(rows))
    if not all(row["accuracy identical"].startswith("yes") for row in rows):
        sys.exit("error: fedsim and pfl reached different accuracies (see the table)")


if __name__ == "__main__":
    main()

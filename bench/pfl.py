"""fedsim against pfl-research (Apple's `pfl`), side by side on identical inputs.

    python bench/pfl.py                          # every config below, 2 pairs each
    python bench/pfl.py --configs bow-10 --pairs 3 [-- overrides for fedsim and the export]

pfl 0.6 needs Python < 3.13 and dp-accounting < 0.6, which conflict with flwr[dp], so it runs in
its own venv (`bench/.venv-pfl`, made from bench/pfl_peer/requirements.txt on first use). For each
config the script exports, from fedsim's own cache: the seeded initial weights, every client's
train and validation features, the clients of every round, each client's row order and torch
seed. pfl_peer/run.py trains on exactly that (same model, Adam re-created per local round, batch
size, epochs, FedAvg weighted by examples, central evaluation on the test split), so the two must
reach the same accuracy, which is checked. Then it runs fedsim and pfl alternately, each measured
from its launch, and prints Markdown tables: steady s/round (rounds 2..R), the end of round 1
(start-up included), wall time, peak PSS of all processes and the driver's peak RSS, with ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

import numpy as np
from common import ROOT, MemorySampler, compose, machine, run_harness, table

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
    from fedsim.config.validate import evaluate_clients_per_round, fit_clients_per_round
    from fedsim.data.cache import load_features
    from fedsim.data.partition import partition_rows, train_val_split
    from fedsim.data.prepare import prepare_data
    from fedsim.run.experiment import load_model
    from fedsim.server.participation import EVALUATE, TRAIN, choose

    cfg = compose(overrides)
    prepared = prepare_data(cfg)
    features = load_features(prepared.train_file, prepared.kind)
    n, seed = int(cfg.num_clients), int(cfg.seed)
    clients, local = {}, {}
    for p in range(n):
        train_rows, val_rows = train_val_split(partition_rows(prepared, p), prepared.val_fraction, prepared.seed, p)
        local[p] = train_rows
        for name, rows in (("train", train_rows), ("val", val_rows)):
            clients.update({f"c{p}/{name}/{k}": np.ascontiguousarray(v) for k, v in subset(features, rows).items()})
    test = load_features(prepared.test_file, prepared.kind)
    save_file(subset(test, np.arange(prepared.num_test)), str(out / "test.safetensors"))
    save_file(clients, str(out / "clients.safetensors"))

    per_round, num_eval = fit_clients_per_round(cfg), evaluate_clients_per_round(cfg)
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


# ----------------------------------------------------------------------------- the two runs


def run_pfl(python: Path, export_dir: Path, workers: int = 1) -> dict:
    """pfl_peer/run.py on an export (as `workers` pfl workers): per-round stamps, accuracy, wall time
    and peak memory."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}"] if workers > 1 else []
    launched = time.time()
    process = subprocess.Popen(
        [str(python), *launcher, str(ROOT / "bench" / "pfl_peer" / "run.py"), str(export_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sampler = MemorySampler(process.pid)
    out, err = process.communicate()
    wall = time.time() - launched
    memory = sampler.stop()
    if process.returncode != 0:
        raise RuntimeError(f"pfl_peer/run.py exited {process.returncode}:\n{err[-3000:]}")
    rounds = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    times = [r["time"] for r in rounds]
    return {
        "round_s": list(np.diff(times)),
        "round1_end_s": times[1] - launched,
        "wall_s": wall,
        "accuracy": rounds[-1]["central_accuracy"],
        "pss_mb": memory.tree_pss,
        "rss_mb": memory.driver_rss,
    }


def first_round_watch(run_dir: Path, launched: float) -> dict:
    """A thread that notes when rounds.csv gets round 1's row, from the process launch."""
    seen: dict = {}

    def watch() -> None:
        path = run_dir / "rounds.csv"
        while "round1_end_s" not in seen and not seen.get("stop"):
            if path.exists() and any(line.startswith("1,") for line in path.read_text().splitlines()):
                seen["round1_end_s"] = time.time() - launched
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return seen


def run_fedsim(overrides: list[str], run_dir: Path) -> dict:
    seen = first_round_watch(run_dir, time.time())
    harness = run_harness(overrides, run_dir, sample_memory=True)
    seen["stop"] = True
    rounds = harness.rounds[harness.rounds["round"] > 0]
    return {
        "round_s": list(rounds["round_time_s"]),
        "round1_end_s": seen.get("round1_end_s", float("nan")),
        "wall_s": harness.wall_s,
        "accuracy": harness.final_accuracy,
        "pss_mb": harness.memory.tree_pss,
        "rss_mb": harness.memory.driver_rss,
    }


def compare(
    name: str, overrides: list[str], pairs: int, python: Path, work: Path, workers: int = 1
) -> tuple[dict, list[dict]]:
    export_dir = work / f"{name}-export"
    export_dir.mkdir()
    export(overrides, export_dir)
    runs = []
    for pair in range(pairs):
        fedsim = run_fedsim(overrides, work / f"{name}-{pair}")
        pfl = run_pfl(python, export_dir, workers)
        runs.append({"pair": pair, "fedsim": fedsim, "pfl": pfl})
        print(
            f"{name} pair {pair}: fedsim {median(fedsim['round_s'][1:]):.2f} s/round, acc {fedsim['accuracy']:.5f}; "
            f"pfl {median(pfl['round_s'][1:]):.2f} s/round, acc {pfl['accuracy']:.5f}",
            flush=True,
        )
    return summary(name, overrides, runs), runs


def summary(name: str, overrides: list[str], runs: list[dict]) -> dict:
    """Medians over the pairs; ratios are fedsim / pfl, per pair, then the median (range)."""

    def steady(run: dict) -> float:
        return float(np.mean(run["round_s"][1:]))

    def ratios(key) -> list[float]:
        return [key(r["fedsim"]) / key(r["pfl"]) for r in runs]

    def cell(key) -> str:
        values = ratios(key)
        return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    def med(side: str, key) -> float:
        return median(key(r[side]) for r in runs)

    accuracies = {(r["fedsim"]["accuracy"], r["pfl"]["accuracy"]) for r in runs}
    return {
        "config": name,
        "overrides": " ".join(overrides),
        "pairs": len(runs),
        "fedsim s/round": med("fedsim", steady),
        "pfl s/round": med("pfl", steady),
        "ratio": cell(steady),
        "round 1 end s, fedsim": med("fedsim", lambda r: r["round1_end_s"]),
        "round 1 end s, pfl": med("pfl", lambda r: r["round1_end_s"]),
        "round 1 ratio": cell(lambda r: r["round1_end_s"]),
        "wall s, fedsim": med("fedsim", lambda r: r["wall_s"]),
        "wall s, pfl": med("pfl", lambda r: r["wall_s"]),
        "wall ratio": cell(lambda r: r["wall_s"]),
        "peak PSS MB, fedsim": med("fedsim", lambda r: r["pss_mb"]),
        "peak PSS MB, pfl": med("pfl", lambda r: r["pss_mb"]),
        "PSS ratio": cell(lambda r: r["pss_mb"]),
        "driver peak RSS MB, fedsim": med("fedsim", lambda r: r["rss_mb"]),
        "driver peak RSS MB, pfl": med("pfl", lambda r: r["rss_mb"]),
        "accuracy fedsim / pfl": "; ".join(f"{a:.5f} / {b:.5f}" for a, b in sorted(accuracies)),
        "identical": all(a == b for a, b in accuracies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--pairs", type=int, default=2, help="fedsim/pfl pairs per config, alternating")
    parser.add_argument(
        "--pfl-workers",
        type=int,
        default=1,
        help="pfl worker processes (torch.distributed, gloo), each with cores / N threads",
    )
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("extra", nargs="*", help="overrides added to every config (after --)")
    args = parser.parse_args()
    python = pfl_python()
    print(f"Machine: {machine()}\n", flush=True)
    rows, every = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs:
            row, runs = compare(name, CONFIGS[name] + args.extra, args.pairs, python, Path(tmp), args.pfl_workers)
            rows.append(row)
            every[name] = runs
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "runs": every}, indent=1))
    print(table(rows))
    if not all(row["identical"] for row in rows):
        sys.exit("error: fedsim and pfl reached different accuracies (see the table)")


if __name__ == "__main__":
    main()

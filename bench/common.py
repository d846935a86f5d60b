"""Shared by the bench scripts: run the harness as a user does, sample its memory and the CPU that
other processes take meanwhile, and run the compute limit (a plain PyTorch loop doing the same work
without Flower or Ray).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
IMDB = os.environ.get("IMDB_PATH", str(ROOT.parent / "shared" / "imdb"))


def compose(overrides: Sequence[str]):
    """The run's config exactly as `python main.py <overrides>` would see it, on the benchmark's IMDB."""
    from fedsim.config.compose import compose as fedsim_compose

    return fedsim_compose([f"data.path={IMDB}", *overrides])


# The transformer case the benchmarks share: MiniLM, 4 clients, 400 train / 200 test reviews, 64 tokens.
MINILM = ["model=minilm", "num_clients=4", "num_rounds=2", "data.train_size=400", "data.test_size=200",
          "data.max_length=64"]  # fmt: skip


def machine() -> str:
    import platform

    import torch

    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    memory_gib = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {memory_gib:.0f} GiB{gpu}"


# ----------------------------------------------------------------------------- a measured run's processes

RUN_MARK = "FEDSIM_BENCH_RUN"  # set to a fresh id in a measured process's environment: its children inherit it


class RunProcesses:
    """The processes of one measured run, told from the rest of the machine: the launched process (`pid`),
    its descendants, and any process whose environment has RUN_MARK=`mark` (Ray's processes, which can be
    reparented to init). A process's membership is decided once, by pid and start time."""

    def __init__(self, pid: int, mark: str) -> None:
        self.pid, self.mark = pid, mark
        self._member: dict[tuple[int, float], bool] = {}
        self._lock = threading.Lock()

    def _marked(self, process: psutil.Process) -> bool:
        try:
            return process.environ().get(RUN_MARK) == self.mark
        except psutil.Error:  # gone, a zombie, or another user's
            return False

    def split(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        """(the run's processes, the launched one first; every other process but this script's), now."""
        with self._lock:
            mine, others, members = [], [], set()
            processes = list(psutil.process_iter(["ppid", "create_time"]))
            for process in sorted(processes, key=lambda p: p.info["create_time"] or 0.0):  # parents first
                if process.pid == os.getpid():
                    continue
                key = (process.pid, process.info["create_time"] or 0.0)
                if key not in self._member:
                    self._member[key] = (
                        process.pid == self.pid or process.info["ppid"] in members or self._marked(process)
                    )
                if self._member[key]:
                    members.add(process.pid)
                    mine.append(process)
                else:
                    others.append(process)
            mine.sort(key=lambda p: p.pid != self.pid)
            return mine, others


class OtherLoad:
    """CPU seconds (user + system) that processes outside a measured run (and outside this script) use
    while it runs, from /proc every `interval` seconds: a run timed while something else competes for
    the cores is slowed by an amount that has nothing to do with it. A process that starts and ends
    between two samples is missed; one that ends between two samples loses that interval."""

    def __init__(self, processes: RunProcesses, interval: float = 0.5) -> None:
        self.processes, self.interval, self.cpu_s = processes, interval, 0.0
        self._seen: dict[tuple[int, float], float] = {}
        self._start = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for process in self.processes.split()[1]:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            created = process.info["create_time"] or 0.0
            key, used = (process.pid, created), times.user + times.system
            # A process older than the run counts from its first sample; a newer one from its start.
            before = self._seen.get(key, used if created < self._start else 0.0)
            self.cpu_s += max(0.0, used - before)
            self._seen[key] = used

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def stop(self) -> float:
        """Stops sampling (after a last sample); the others' CPU seconds since the start."""
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.cpu_s


# ----------------------------------------------------------------------------- memory sampling


@dataclass
class MemoryPeaks:
    """Peak resident memory (MB) seen while sampling a process tree every `interval` seconds."""

    driver_rss: float = 0.0
    worker_rss_max: float = 0.0  # the largest single Ray worker (client actor)
    workers_rss_sum: float = 0.0  # all Ray workers together (shared pages counted once per process)
    tree_pss: float = 0.0  # proportional set size of the whole tree: shared pages split, nothing counted twice
    num_workers: int = 0


class MemorySampler:
    """Samples the driver (`pid`) and its descendants, or the processes of `processes` where given (those
    carrying the run's mark too): Ray workers are the processes named `ray::...`.

    RSS every `interval` seconds; PSS (smaps_rollup, costly on large processes) every fifth sample.
    """

    def __init__(self, pid: int, interval: float = 1.0, processes: RunProcesses | None = None) -> None:
        self.pid, self.interval, self.processes, self.peaks = pid, interval, processes, MemoryPeaks()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _tree(self) -> list[psutil.Process]:
        if self.processes is not None:
            return self.processes.split()[0]
        try:
            driver = psutil.Process(self.pid)
            return [driver, *driver.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    @staticmethod
    def _mb(process: psutil.Process, field: str) -> float:
        """A process's memory figure in MB (rss, or pss: costly on large processes), 0 once it is gone."""
        try:
            info = process.memory_full_info() if field == "pss" else process.memory_info()
            return getattr(info, field) / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return 0.0

    @staticmethod
    def _is_worker(process: psutil.Process) -> bool:
        try:
            return " ".join(process.cmdline()).startswith("ray::")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False

    def _loop(self) -> None:
        p, count = self.peaks, 0
        while not self._stop.is_set():
            count += 1
            tree = self._tree()
            workers = [process for process in tree if self._is_worker(process)]
            worker_rss = [self._mb(process, "rss") for process in workers]
            p.driver_rss = max([p.driver_rss, *(self._mb(process, "rss") for process in tree[:1])])
            p.worker_rss_max = max([p.worker_rss_max, *worker_rss])
            p.workers_rss_sum = max(p.workers_rss_sum, sum(worker_rss))
            if count % 5 == 1:
                p.tree_pss = max(p.tree_pss, sum(self._mb(process, "pss") for process in tree))
            p.num_workers = max(p.num_workers, len(workers))
            self._stop.wait(self.interval)

    def stop(self) -> MemoryPeaks:
        self._stop.set()
        self._thread.join()
        return self.peaks


# ----------------------------------------------------------------------------- the harness


@dataclass
class HarnessRun:
    wall_s: float  # the whole `python main.py` process: imports, Ray start, data, every round
    rounds: pd.DataFrame
    clients: pd.DataFrame
    run: dict
    memory: MemoryPeaks = field(default_factory=MemoryPeaks)

    @property
    def rounds_s(self) -> float:
        """Time of rounds 1..R (each: fit, aggregation, central and federated evaluation)."""
        return float(self.rounds.loc[self.rounds["round"] > 0, "round_time_s"].sum())

    @property
    def final_accuracy(self) -> float:
        return float(self.run["final_central_accuracy"])


def bench_parser(doc: str, runs: int, default: Sequence[str]) -> argparse.ArgumentParser:
    """A bench script's command line: its docstring's first line, `--runs` and the runs' overrides (after --;
    the script uses `default` where none are given)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("overrides", nargs="*", help=f"the runs' overrides (after --; default: {' '.join(default)})")
    return parser


def same_results(a: Path, b: Path) -> bool:
    """Whether two runs' rounds.csv and clients.csv are equal but for timings, memory and Ray's node id."""
    for name in ("rounds.csv", "clients.csv"):
        x, y = pd.read_csv(a / name), pd.read_csv(b / name)
        keep = [c for c in x.columns if not c.endswith(("_s", "_mb")) and c != "node"]
        if list(x.columns) != list(y.columns) or not x[keep].equals(y[keep]):
            return False
    return True


def run_harness(
    overrides: Sequence[str], run_dir: Path, script: Sequence[str] = ("main.py",), sample_memory: bool = False
) -> HarnessRun:
    """`python main.py <overrides>` as a user runs it, optionally sampled for memory; raises if it failed."""
    from fedsim.rundir import read_info  # fedsim is importable once ROOT is on sys.path

    command = [sys.executable, *script, f"data.path={IMDB}", *overrides, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = MemorySampler(process.pid) if sample_memory else None
    output, _ = process.communicate()
    wall = time.perf_counter() - start
    memory = sampler.stop() if sampler else MemoryPeaks()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{output[-3000:]}")
    return HarnessRun(
        wall,
        pd.read_csv(run_dir / "rounds.csv"),
        pd.read_csv(run_dir / "clients.csv"),
        read_info(run_dir) or {},
        memory,
    )


# ----------------------------------------------------------------------------- the compute limit

_worker: dict = {}


def _put(weights: list[np.ndarray], path: str) -> str:
    """Weights travel between the loop's processes as files in shared memory: a Pool pipe moves
    large pickles slowly (with one worker, moving the tasks took longer than computing them:
    bench/README.md), which would make the limit no limit."""
    from safetensors.numpy import save_file

    save_file({str(i): np.ascontiguousarray(w) for i, w in enumerate(weights)}, path)
    return path


def _get(path: str) -> list[np.ndarray]:
    from safetensors.numpy import load_file

    tensors = load_file(path)
    return [tensors[str(i)] for i in range(len(tensors))]


def _init_worker(settings, threads: int) -> None:
    """One model and the data per worker process, built once (as a client actor does)."""
    import torch

    from fedsim.client.client import actor_model, configure_process

    configure_process(threads, "WARNING")
    _worker["settings"] = settings
    _worker["model"] = actor_model(settings)
    torch.set_num_threads(threads)


def _fit(task: tuple[int, int, str, str]) -> tuple[int, str, int, float]:
    """The same local training as IMDBClient.fit, without Flower."""
    import torch
    from hydra.utils import instantiate

    from fedsim.client.client import step_seed
    from fedsim.data.loader import load_data
    from fedsim.model.train import train
    from fedsim.model.weights import get_weights, set_weights

    partition_id, server_round, weights, out = task
    settings, model = _worker["settings"], _worker["model"]
    start = time.perf_counter()
    trainloader, _ = load_data(settings.prepared, partition_id, settings.batch_size)
    set_weights(model, _get(weights))
    seed = step_seed(settings.seed, server_round, partition_id)
    torch.manual_seed(seed)
    trainloader.reseed(seed)
    optimizer = instantiate(settings.optimizer)(model.parameters(), lr=settings.lr)
    train(model, trainloader, settings.local_epochs, optimizer, settings.device)
    elapsed = time.perf_counter() - start
    return partition_id, _put(get_weights(model), out), trainloader.num_examples, elapsed


def _evaluate(task: tuple[int, str]) -> tuple[int, float, int]:
    from fedsim.data.loader import load_data
    from fedsim.model.train import evaluate
    from fedsim.model.weights import set_weights

    partition_id, weights = task
    settings, model = _worker["settings"], _worker["model"]
    _, valloader = load_data(settings.prepared, partition_id, settings.batch_size)
    set_weights(model, _get(weights))
    _, accuracy = evaluate(model, valloader, settings.device)
    return partition_id, accuracy, valloader.num_examples


@dataclass
class LimitRun:
    wall_s: float  # start of worker processes, data, every round
    round_s: list[float]
    final_accuracy: float
    train_examples: int  # per round
    fit_s: list[float]  # per round: the clients' fit times summed (as clients.csv's fit_time_s)

    @property
    def rounds_s(self) -> float:
        return float(sum(self.round_s))


def run_limit(overrides: Sequence[str], processes: int | None = None, threads: int | None = None) -> LimitRun:
    """The compute limit: FedAvg with the harness's clients' exact local work, in plain PyTorch.

    `processes` worker processes (default: as many clients as the harness runs at once,
    cores // threads, or 1 / resources.num_gpus on a GPU), each with `threads` torch threads
    (default resources.num_cpus), one model each; the same partitions, batch sizes, local epochs,
    seeds, central and federated evaluation.
    """
    import torch
    from hydra.utils import instantiate

    from fedsim.client.client import ClientSettings
    from fedsim.config.counts import Counts
    from fedsim.config.settings import DataSettings
    from fedsim.data.loader import load_test
    from fedsim.data.prepare import prepare_data
    from fedsim.model.train import evaluate
    from fedsim.model.weights import get_weights, set_weights

    cfg = compose(overrides)
    start = time.perf_counter()
    settings = ClientSettings.from_cfg(cfg, prepare_data(DataSettings.of(cfg)))
    threads = threads or max(1, int(cfg.resources.num_cpus))
    if cfg.resources.num_gpus > 0:  # as many clients share the GPU as the harness would run on it
        processes = processes or max(1, int(1 / cfg.resources.num_gpus))
    processes = processes or max(1, (os.cpu_count() or 1) // threads)
    torch.manual_seed(cfg.seed)
    device = settings.device
    model = instantiate(cfg.model.net).to(device)
    torch.set_num_threads(os.cpu_count() or 1)  # central evaluation gets the whole machine, as in the driver
    testloader = load_test(settings.prepared, 4 * cfg.client.batch_size)
    weights = get_weights(model)
    rng = random.Random(cfg.seed)
    counts = Counts.of(cfg)
    per_round, num_eval = counts.fit, counts.evaluate
    round_s, fit_s, accuracy, train_examples = [], [], float("nan"), 0
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with (
        tempfile.TemporaryDirectory(dir=shm) as tmp,
        mp.get_context("spawn").Pool(processes, _init_worker, (settings, threads)) as pool,
    ):
        shared = _put(weights, f"{tmp}/global.safetensors")
        pool.map(_evaluate, [(i, shared) for i in range(processes)])  # warm: every worker has built its model
        set_weights(model, weights)
        evaluate(model, testloader, device)  # round 0's central evaluation, as the harness does
        for server_round in range(1, cfg.num_rounds + 1):
            t0 = time.perf_counter()
            chosen = sorted(rng.sample(range(cfg.num_clients), per_round))
            results = pool.map(
                _fit, [(i, server_round, shared, f"{tmp}/client_{i}.safetensors") for i in chosen], chunksize=1
            )
            total = sum(n for _, _, n, _ in results)
            train_examples = total
            fit_s.append(sum(t for _, _, _, t in results))
            client_weights = [(_get(path), n) for _, path, n, _ in results]
            weights = [sum(w[k].astype(np.float64) * n for w, n in client_weights) / total for k in range(len(weights))]
            weights = [w.astype(np.float32) for w in weights]
            del client_weights
            shared = _put(weights, f"{tmp}/global.safetensors")
            set_weights(model, weights)
            _, accuracy = evaluate(model, testloader, device)
            evaluated = sorted(rng.sample(range(cfg.num_clients), num_eval))
            pool.map(_evaluate, [(i, shared) for i in evaluated], chunksize=1)
            round_s.append(time.perf_counter() - t0)
    return LimitRun(time.perf_counter() - start, round_s, accuracy, train_examples, fit_s)


def add_ratios(rows: list[dict], columns: dict[str, str]) -> None:
    """Add `new: column` to every row as a multiple of the first row's value (the baseline)."""
    for row in rows:
        for new, column in columns.items():
            row[new] = row[column] / rows[0][column]


def table(rows: list[dict]) -> str:
    """A Markdown table, for pasting into bench/README.md."""
    frame = pd.DataFrame(rows)
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    return head + "\n".join(
        "| " + " | ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row) + " |"
        for row in frame.itertuples(index=False)
    )

"""Shared fixtures: real IMDB from ../shared/imdb when present, else a small generated look-alike."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
from omegaconf import DictConfig

from fedsim.config.compose import compose

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMDB = ROOT.parent / "shared" / "imdb"

POSITIVE = "great wonderful superb moving brilliant loved enjoyable touching masterpiece fun".split()
NEGATIVE = "awful boring terrible waste dull hated poor stupid mess worst".split()
NEUTRAL = "movie film plot actor scene story director character ending script time".split()


def make_reviews(n: int, seed: int) -> pd.DataFrame:
    """Reviews whose label is carried by sentiment words among neutral ones, ordered neg then pos like IMDB."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n // 2)
    texts = []
    for label in labels:
        words = list(rng.choice(NEUTRAL, 20)) + list(rng.choice(POSITIVE if label else NEGATIVE, 4))
        words += list(rng.choice(NEGATIVE if label else POSITIVE, 1))
        rng.shuffle(words)
        texts.append(" ".join(words) + ".<br /><br />The end")
    return pd.DataFrame({"text": texts, "label": labels})


@pytest.fixture(scope="session")
def generated_imdb(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imdb")
    make_reviews(1200, 0).to_parquet(root / "train.parquet")
    make_reviews(400, 1).to_parquet(root / "test.parquet")
    return root


@pytest.fixture(scope="session")
def imdb_dir(generated_imdb) -> Path:
    """The real IMDB copy where this checkout has one beside it, else the generated one."""
    return SHARED_IMDB if (SHARED_IMDB / "train.parquet").exists() else generated_imdb


SESSION = "FEDSIM_TEST_SESSION"  # every process the tests start inherits it


def started_by_this_session() -> list[psutil.Process]:
    """Live processes (zombies aside) that carry this test session's mark: the tests started them, or what they
    started did (Ray's raylet and workers, Flower's SuperLink, SuperNodes and apps, main.py)."""
    mark, found = os.environ[SESSION], []
    for process in psutil.process_iter():
        try:
            if (
                process.pid != os.getpid()
                and process.status() != psutil.STATUS_ZOMBIE
                and process.environ().get(SESSION) == mark
            ):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(autouse=True, scope="session")
def no_process_left():
    """After the whole suite, no process any test started is left (each test stops what it starts)."""
    os.environ[SESSION] = uuid.uuid4().hex
    yield
    _, left = psutil.wait_procs(started_by_this_session(), timeout=30)
    names = []
    for process in left:
        try:
            names.append(f"{process.pid} {' '.join(process.cmdline())[:120]}")
            process.kill()
        except psutil.NoSuchProcess:
            continue
    assert not names, f"processes outlived the test suite: {names}"


@pytest.fixture(autouse=True, scope="session")
def isolated_cache(tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("cache")
    os.environ["FEDSIM_CACHE"] = str(cache)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return cache


def make_cfg(*overrides: str) -> DictConfig:
    """The project's config with overrides, composed as `main.py` would."""
    return compose(overrides)


SMALL = ["num_clients=3", "num_rounds=2", "data.train_size=1500", "data.test_size=500", "client.local_epochs=3"]
METRICS = ["central_loss", "central_accuracy", "fed_loss", "fed_accuracy", "train_loss"]


def run_main(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "main.py", f"hydra.run.dir={run_dir}", *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="session")
def small_run(imdb_dir, tmp_path_factory) -> Path:
    """`python main.py` (simulation) of SMALL, once per session: the reference other runs of it must equal."""
    run_dir = tmp_path_factory.mktemp("run")
    result = run_main(run_dir, f"data.path={imdb_dir}", *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("round ") >= 3 and "ETA" in result.stdout
    return run_dir

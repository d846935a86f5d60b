"""A run with archive.mode=all: files, manifest, layers.csv, FedAvg's mean, and offline == online scrutiny."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.configs import make_cfg
from helpers.runs import ROOT, run_locally

from fedsim.outputs.archive import Archive
from fedsim.outputs.columns import LAYER_COLUMNS
from fedsim.outputs.from_archive import main as scrutiny_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archived_run(imdb_dir, tmp_path_factory) -> Path:
    """The loop in-process on a LocalGrid (main.py's own path is the session's `small_run`)."""
    run_dir, printed = tmp_path_factory.mktemp("archived"), io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_locally(
            make_cfg(
                f"data.path={imdb_dir}",
                "num_clients=3",
                "num_rounds=2",
                "data.train_size=600",
                "data.test_size=100",
                "archive.mode=all",
            ),
            run_dir,
        )
    assert "GB expected" in printed.getvalue()
    return run_dir


def test_every_client_and_global_file_is_archived(archived_run):
    archive = Archive(archived_run)
    assert archive.rounds() == [0, 1, 2]
    assert archive.clients(1) == archive.clients(2) == [0, 1, 2]
    manifest = archive.manifest
    assert len(manifest) == 3 + 2 * 3 and set(manifest.kind) == {"global", "client"}
    assert all((archived_run / p).stat().st_size == n for p, n in zip(manifest.path, manifest.num_bytes))


def test_fedavg_global_is_the_weighted_mean_of_archived_clients(archived_run):
    archive = Archive(archived_run)
    clients = pd.read_csv(archived_run / "clients.csv")
    for rnd in (1, 2):
        counts = clients[clients["round"] == rnd].set_index("client_id").num_examples
        for layer in archive.layers():
            mean = sum(counts[c] * archive.tensor(rnd, layer, c).astype(np.float64) for c in counts.index)
            np.testing.assert_allclose(archive.tensor(rnd, layer), mean / counts.sum(), atol=1e-6)


def test_layers_csv_and_client_statistics_are_filled(archived_run):
    layers = pd.read_csv(archived_run / "layers.csv")
    assert list(layers.columns) == LAYER_COLUMNS
    assert len(layers) == 2 * 3 and set(layers.layer) == {"embedding.weight", "fc.weight", "fc.bias"}
    assert (layers.num_clients == 3).all() and (layers.mean_variance > 0).all()
    clients = pd.read_csv(archived_run / "clients.csv")
    assert clients[["update_norm", "cosine_to_mean", "distance_to_median", "norm_zscore"]].notna().all().all()


def test_offline_statistics_agree_with_online(archived_run, tmp_path):
    scrutiny_main([str(archived_run), "--out", str(tmp_path)])
    key = ["round", "layer"]  # safetensors lists layers alphabetically, the run in state_dict order
    online_layers = pd.read_csv(archived_run / "layers.csv").sort_values(key, ignore_index=True)
    offline_layers = pd.read_csv(tmp_path / "layers_offline.csv").sort_values(key, ignore_index=True)
    assert online_layers[key].equals(offline_layers[key])
    columns = LAYER_COLUMNS[LAYER_COLUMNS.index("mean_variance") : LAYER_COLUMNS.index("attack")]
    np.testing.assert_allclose(offline_layers[columns], online_layers[columns], rtol=1e-6, atol=1e-9)
    online = pd.read_csv(archived_run / "clients.csv")
    offline = pd.read_csv(tmp_path / "clients_offline.csv")
    stats = ["update_norm", "cosine_to_mean", "distance_to_median", "norm_zscore"]
    np.testing.assert_allclose(offline[stats], online[stats], rtol=1e-6, atol=1e-9)


def test_cli_module_runs(archived_run, tmp_path):
    out = tmp_path / "new" / "folder"  # a folder that does not exist yet is made
    result = subprocess.run(
        [sys.executable, "-m", "fedsim.outputs.from_archive", str(archived_run), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "layers_offline.csv" in result.stdout
    assert (out / "layers_offline.csv").exists() and (out / "clients_offline.csv").exists()


def test_run_is_refused_when_the_disk_is_too_small(imdb_dir, tmp_path):
    # 40 rounds of 3 clients at float32 need about 2 GB; cap the free space the check sees at 1 MB.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import shutil, sys, runpy; from collections import namedtuple; "
            "shutil.disk_usage = lambda p: namedtuple('U', 'total used free')(1, 0, 1_000_000); "
            "sys.argv = sys.argv[1:]; runpy.run_path('main.py', run_name='__main__')",
            "main.py",
            f"hydra.run.dir={tmp_path}",
            f"data.path={imdb_dir}",
            "num_clients=3",
            "num_rounds=40",
            "data.train_size=300",
            "data.test_size=50",
            "archive.mode=all",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "error: archive.mode" in result.stderr and "GB free" in result.stderr
    assert not (tmp_path / "rounds.csv").exists()

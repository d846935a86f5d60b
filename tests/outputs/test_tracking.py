"""Trackers read back with each tool's own reader equal rounds.csv; a tracker that fails warns once and
costs the run nothing."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.configs import QUICK, make_cfg
from helpers.runs import run_locally
from omegaconf import OmegaConf

from fedsim.collections.plan import Planned
from fedsim.collections.scheduler import execute, tracking_labels
from fedsim.config.compose import flatten
from fedsim.outputs.tracking.tracker import group_multirun, scalars

UNARCHIVED = [*QUICK, "archive.mode=none"]


def rounds_metrics(run_dir: Path) -> dict[str, dict[int, float]]:
    """rounds.csv as {metric: {round: value}}, the cells a tracker logs (numbers only)."""
    out: dict[str, dict[int, float]] = {}
    for row in pd.read_csv(run_dir / "rounds.csv").to_dict("records"):
        for key, value in scalars(row).items():
            out.setdefault(key, {})[int(row["round"])] = value
    return out


def test_tensorboard_events_equal_rounds_csv(generated_imdb, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_locally(make_cfg(f"data.path={generated_imdb}", *UNARCHIVED, "tracking=tensorboard"), tmp_path)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    expected = rounds_metrics(tmp_path)
    assert set(events.Tags()["scalars"]) == set(expected) and "central_accuracy" in expected
    for key, by_round in expected.items():
        logged = {e.step: e.value for e in events.Scalars(key)}
        assert logged.keys() == by_round.keys()
        np.testing.assert_allclose(list(logged.values()), list(by_round.values()), rtol=1e-6)  # float32 in events
    assert {"config/text_summary", "run.json/text_summary"} <= set(events.Tags()["tensors"])


def test_mlflow_store_equals_rounds_csv_params_and_group(generated_imdb, tmp_path):
    """Two runs of one collection on SQLite: one experiment named by the collection, each run tagged with its
    run_id, the resolved config as parameters, every metric per round, run.json's fields and the model."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = {}
    for run_id in (0, 1):
        cfg = make_cfg(
            f"data.path={generated_imdb}",
            *UNARCHIVED,
            f"seed={run_id}",
            "tracking=mlflow",
            f"tracking.uri={uri}",
            *tracking_labels("tiny-collection", run_id),
        )
        runs[run_id] = (tmp_path / f"run_{run_id}", cfg)
        run_locally(cfg, runs[run_id][0])
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny-collection")
    found = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags["run_id"] for r in found) == ["0", "1"]
    for run in found:
        run_dir, cfg = runs[int(run.data.tags["run_id"])]
        assert run.info.status == "FINISHED" and run.info.run_name == run_dir.name
        assert run.data.params == {
            k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in flatten(cfg).items()
        }
        for key, by_round in rounds_metrics(run_dir).items():
            history = client.get_metric_history(run.info.run_id, key)
            assert {m.step: m.value for m in history} == by_round
        info = json.loads((run_dir / "run.json").read_text())
        assert run.data.tags["run.status"] == "completed" == info["status"]
        assert run.data.tags["run.final_central_accuracy"] == str(info["final_central_accuracy"])
        assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["model.safetensors"]


def test_unreachable_tracking_server_warns_once_and_costs_nothing(generated_imdb, tmp_path, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = make_cfg(
        f"data.path={generated_imdb}", *UNARCHIVED, "tracking=mlflow", f"tracking.uri=http://127.0.0.1:{port}"
    )
    run_locally(cfg, tmp_path / "tracked")
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: tracking")]
    assert len(warnings) == 1 and "mlflow failed" in warnings[0], warnings
    run_locally(make_cfg(f"data.path={generated_imdb}", *UNARCHIVED), tmp_path / "plain")
    columns = ["round", "central_loss", "central_accuracy", "fed_loss", "fed_accuracy", "train_loss"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "tracked" / "rounds.csv")[columns],
        pd.read_csv(tmp_path / "plain" / "rounds.csv")[columns],
    )
    assert json.loads((tmp_path / "tracked" / "run.json").read_text())["status"] == "completed"


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (.wandb): LevelDB's log format (32 KiB blocks of chunks, each with
    a 7-byte header: CRC, length, type) after a 7-byte file header, each record a protobuf `Record`."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunk, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # the rest of a block too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_wandb_offline_run_holds_the_history(generated_imdb, tmp_path):
    cfg = make_cfg(f"data.path={generated_imdb}", *UNARCHIVED, "tracking=wandb", *tracking_labels("tiny", 4))
    run_locally(cfg, tmp_path)
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "tiny" and list(run.tags) == ["run_id=4"] and run.display_name == tmp_path.name
    history = [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    for key, by_round in rounds_metrics(tmp_path).items():
        assert {h["_step"]: h[key] for h in history if key in h} == pytest.approx(by_round, rel=1e-12)
    summary = {
        i.key or "/".join(i.nested_key): i.value_json
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for i in r.summary.update
    }
    assert json.loads(summary["run.status"]) == "completed"
    (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert artifact.type == "model" and [f.path for f in artifact.manifest.contents] == ["model.safetensors"]


def test_collection_and_multirun_labels(tmp_path):
    """A collection's fresh runs carry its name and their run_id; a resumed one gets no new labels. A
    multirun's jobs are grouped by their sweep folder."""
    commands = []

    class Recorder:
        overrides = ()

        def run(self, command, log_path, run_dir):
            commands.append(command)
            return 0

    execute(
        Recorder(), Path("main.py"), Planned(("num_rounds=2",), 3), tmp_path / "run_0007", tracking_labels("sweep,a", 7)
    )
    assert commands[0][-2:] == ["tracking.group='sweep,a'", "++tracking.tags.run_id=7"]
    cut = tmp_path / "run_0008"  # cut off after a checkpoint: it resumes, under the labels it started with
    cut.mkdir()
    (cut / "checkpoint.safetensors").write_bytes(b"")
    (cut / "run.json").write_text('{"status": "interrupted"}')
    execute(Recorder(), Path("main.py"), Planned(("num_rounds=2",), 3), cut, tracking_labels("sweep,a", 8))
    assert commands[1][2:] == [f"resume={cut}"]
    cfg = make_cfg("tracking=mlflow")
    group_multirun(cfg, "results/multiruns/2026-12-01/13-00-00-000001", 2)
    assert cfg.tracking.group == "multirun 2026-12-01/13-00-00-000001"
    assert OmegaConf.to_container(cfg.tracking.tags) == {"job": 2}

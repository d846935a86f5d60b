"""Each output is a callback fed by RoundRecords: one test per callback, no Flower, no Ray."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

import fedsim.outputs.memory
import fedsim.server.record
from fedsim.outputs.archive import Archive, ArchiveWriter, WeightArchive
from fedsim.outputs.columns import CLIENTS_COLUMNS, LAYER_COLUMNS, ROUNDS_COLUMNS
from fedsim.outputs.csv_logs import ClientsCsv, RoundsCsv
from fedsim.outputs.detection import DetectionCsv
from fedsim.outputs.final_model import FinalModel
from fedsim.outputs.layer_stats import WeightScrutiny, round_statistics
from fedsim.outputs.memory import MemoryProbe
from fedsim.outputs.progress import Progress
from fedsim.outputs.summary import RunSummary
from fedsim.server.record import ClientUpdate, RoundRecord

NAMES = ["emb.weight", "fc.bias"]


def weights(rng: np.random.Generator, scale: float = 1.0) -> list[np.ndarray]:
    return [(scale * rng.standard_normal((50, 4))).astype(np.float32), rng.standard_normal(2).astype(np.float32)]


def make_round(server_round: int, num_clients: int = 4, malicious: tuple[int, ...] = (), seed: int = 0) -> RoundRecord:
    """A round whose malicious clients return far-off weights; round 0 has no clients."""
    rng = np.random.default_rng([seed, server_round])
    start = weights(rng)
    clients = (
        []
        if server_round == 0
        else [
            ClientUpdate(
                client_id=c,
                num_examples=10 + c,
                train_loss=0.5 + c / 10,
                fit_time_s=0.1 * c,
                weights=[s + 0.01 * w + (5.0 if c in malicious else 0.0) for s, w in zip(start, weights(rng))],
                is_malicious=c in malicious,
                attack="sign_flip" if c in malicious else "none",
            )
            for c in range(num_clients)
        ]
    )
    return RoundRecord(
        server_round=server_round,
        names=NAMES,
        start_weights=start if clients else None,
        global_weights=weights(rng),
        clients=clients,
        metrics={
            "round": server_round,
            "central_loss": 0.7 - server_round / 10,
            "central_accuracy": 0.5 + server_round / 10,
            "num_fit_clients": len(clients),
            "num_failures": 0,
        },
    )


def test_memory_probe_adds_the_server_process_memory(monkeypatch):
    monkeypatch.setattr(fedsim.outputs.memory, "memory_mb", lambda: {"rss": 812.5, "shared": 96.25})
    record = make_round(1)
    MemoryProbe().on_round_end(record)
    assert (record.metrics["driver_rss_mb"], record.metrics["driver_shared_mb"]) == (812.5, 96.25)


def test_weight_scrutiny_writes_layers_and_fills_each_update(tmp_path):
    scrutiny = WeightScrutiny(tmp_path / "layers.csv", "sign_flip", 0.25)
    records = [make_round(r, malicious=(2,)) for r in range(3)]
    for record in records:
        scrutiny.on_round_end(record)
    scrutiny.close()
    layers = pd.read_csv(tmp_path / "layers.csv")
    assert list(layers.columns) == LAYER_COLUMNS and len(layers) == 2 * len(NAMES)  # round 0 has no clients
    assert set(layers.attack) == {"sign_flip"} and set(layers.malicious_node_ratio) == {0.25}
    expected_layers, expected_updates = round_statistics(
        NAMES, records[2].start_weights, [u.weights for u in records[2].clients]
    )
    assert layers[layers["round"] == 2].mean_variance.tolist() == pytest.approx(
        [r["mean_variance"] for r in expected_layers]
    )
    assert [u.stats for u in records[2].clients] == expected_updates
    assert max(records[2].clients, key=lambda u: u.stats["update_norm"]).client_id == 2


def test_weight_scrutiny_disabled_writes_only_the_header(tmp_path):
    scrutiny = WeightScrutiny(tmp_path / "layers.csv", "none", 0.0, enabled=False)
    scrutiny.on_run_start(None)
    record = make_round(1)
    scrutiny.on_round_end(record)
    scrutiny.close()
    assert pd.read_csv(tmp_path / "layers.csv").empty and all(not u.stats for u in record.clients)


def test_clients_csv_has_one_row_per_update_with_ground_truth_and_statistics(tmp_path):
    output = ClientsCsv(tmp_path / "clients.csv")
    record = make_round(1, malicious=(1,))
    record.clients[0].stats = {"update_norm": 1.5, "cosine_to_mean": 0.2, "distance_to_median": 0.3, "norm_zscore": -1}
    output.on_round_end(make_round(0))
    output.on_round_end(record)
    output.close()
    clients = pd.read_csv(tmp_path / "clients.csv")
    assert list(clients.columns) == CLIENTS_COLUMNS and clients.client_id.tolist() == [0, 1, 2, 3]
    assert clients.is_malicious.tolist() == [False, True, False, False]
    assert clients.attack.tolist() == ["none", "sign_flip", "none", "none"]
    assert clients.update_norm.iloc[0] == 1.5 and clients.update_norm.iloc[1:].isna().all()
    assert clients.num_examples.tolist() == [10, 11, 12, 13] and clients.train_loss.iloc[3] == pytest.approx(0.8)


def test_rounds_csv_times_the_round_and_keeps_earlier_outputs_columns(tmp_path, monkeypatch):
    output = RoundsCsv(tmp_path / "rounds.csv")
    record = make_round(1)
    record.started = 100.0
    monkeypatch.setattr(fedsim.server.record.time, "perf_counter", lambda: 102.5)  # the round began 2.5 s ago
    record.metrics["driver_rss_mb"] = 123.0
    output.on_round_end(record)
    output.close()
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert list(rounds.columns) == ROUNDS_COLUMNS and rounds["round"].tolist() == [1]
    assert rounds.round_time_s.iloc[0] == 2.5 and rounds.driver_rss_mb.iloc[0] == 123.0
    assert pd.isna(rounds.fed_accuracy.iloc[0])  # nobody set it: an empty cell, not a made-up value


@pytest.mark.parametrize("clients", [False, True])
def test_weight_archive_stores_global_and_optionally_client_weights(tmp_path, clients):
    output = WeightArchive(lambda resume_after: ArchiveWriter(tmp_path, NAMES, ["*"], "float32"), clients=clients)
    output.on_run_start(None)
    records = [make_round(0), make_round(1)]
    for record in records:
        output.on_round_end(record)
    output.on_run_end({})
    output.close()  # after on_run_end: harmless
    archive = Archive(tmp_path)
    assert archive.rounds() == [0, 1] and archive.clients(1) == ([0, 1, 2, 3] if clients else [])
    np.testing.assert_array_equal(archive.tensor(1, "emb.weight"), records[1].global_weights[0])
    if clients:
        np.testing.assert_array_equal(archive.tensor(1, "fc.bias", client_id=3), records[1].clients[3].weights[1])


def test_progress_prints_one_line_per_round_with_an_eta():
    lines: list[str] = []
    progress = Progress(num_rounds=4, echo=lines.append)
    for server_round in range(3):
        record = make_round(server_round)
        record.metrics.update(round_time_s=1.25, fed_accuracy=0.75 if server_round else None)
        progress.on_round_end(record)
    assert len(lines) == 3 and lines[0].startswith("round   0/4") and "ETA -" in lines[0]
    assert "central_acc 0.7000" in lines[2] and "fed_acc 0.7500" in lines[2] and "1.2s" in lines[2]
    assert "ETA -" not in lines[2] and lines[2].split("ETA ")[1].endswith("s")


def test_run_summary_gives_run_json_its_final_metrics():
    """Accuracy peaks in round 1 and falls in round 2: best and final differ."""
    summary_output, summary = RunSummary(), {}
    for server_round, accuracy in enumerate((0.5, 0.8, 0.7)):
        record = make_round(server_round)
        record.metrics.update(central_accuracy=accuracy, fed_accuracy=0.6)
        summary_output.on_round_end(record)
    summary_output.on_run_end(summary)
    assert summary == {
        "final_central_accuracy": 0.7,
        "best_central_accuracy": 0.8,
        "final_central_loss": pytest.approx(0.5),
        "final_fed_accuracy": 0.6,
        "rounds_completed": 2,
    }


def test_detection_csv_scores_rounds_with_both_classes_from_clients_csv(tmp_path):
    scrutiny, clients = WeightScrutiny(tmp_path / "layers.csv", "sign_flip", 0.25), ClientsCsv(tmp_path / "clients.csv")
    output = DetectionCsv(tmp_path / "d.csv", tmp_path / "clients.csv")
    for server_round in range(3):
        record = make_round(server_round, malicious=(2,))
        scrutiny.on_round_end(record)
        clients.on_round_end(record)
    scrutiny.close()
    summary: dict = {}
    output.on_run_end(summary)
    detection = pd.read_csv(tmp_path / "d.csv")
    assert sorted(detection["round"].unique()) == [1, 2] and len(detection) == 2 * 3
    assert summary["detection_auc"]["distance_to_median"] == 1.0


def test_detection_csv_is_not_written_without_malicious_clients(tmp_path):
    clients, summary = ClientsCsv(tmp_path / "clients.csv"), {}
    clients.on_round_end(make_round(1))
    DetectionCsv(tmp_path / "d.csv", tmp_path / "clients.csv").on_run_end(summary)
    assert not (tmp_path / "d.csv").exists() and "detection_auc" not in summary


def test_final_model_saves_the_last_global_weights_by_name(tmp_path):
    output = FinalModel(tmp_path / "model.safetensors")
    records = [make_round(r) for r in range(3)]
    for record in records:
        output.on_round_end(record)
    output.on_run_end({})
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert list(saved) == sorted(NAMES)
    np.testing.assert_array_equal(saved["emb.weight"], records[-1].global_weights[0])


def run_outputs(make_outputs, records, stop_after: int | None = None) -> dict:
    """Feed `records` to fresh outputs. With `stop_after`, "kill" them one round after that round's
    checkpoint (that round written but not checkpointed) and resume new ones from the saved state."""
    outputs = make_outputs()
    for output in outputs:
        output.on_run_start(None)
    for record in records if stop_after is None else records[: stop_after + 2]:
        for output in outputs:
            output.on_round_end(record)
        if record.server_round == stop_after:
            saved = [output.state() for output in outputs]
    if stop_after is not None:
        for output in outputs:
            output.close()
        outputs = make_outputs()
        for output, state in zip(outputs, saved):
            output.on_run_start(state)
        for record in records[stop_after + 1 :]:
            for output in outputs:
                output.on_round_end(record)
    summary: dict = {}
    for output in outputs:
        output.on_run_end(summary)
        output.close()
    return summary


def test_resumed_outputs_equal_an_uninterrupted_runs(tmp_path):
    records = [make_round(r, malicious=(1,)) for r in range(5)]

    def outputs(folder):
        return lambda: [
            WeightScrutiny(folder / "layers.csv", "sign_flip", 0.25),
            ClientsCsv(folder / "clients.csv"),
            WeightArchive(
                lambda after: ArchiveWriter(folder, NAMES, ["*"], "float32", resume_after=after), clients=True
            ),
            RoundsCsv(folder / "rounds.csv"),
            RunSummary(),
        ]

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    expected = run_outputs(outputs(whole), records)
    summary = run_outputs(outputs(cut), records, stop_after=2)
    assert summary == expected and summary["rounds_completed"] == 4
    for name in ("layers.csv", "clients.csv"):
        assert (cut / name).read_text() == (whole / name).read_text()
    rounds = [pd.read_csv(d / "rounds.csv").drop(columns="round_time_s") for d in (cut, whole)]
    pd.testing.assert_frame_equal(*rounds)
    assert pd.read_csv(cut / "rounds.csv")["round"].tolist() == [0, 1, 2, 3, 4]  # round 3 not written twice
    manifests = [pd.read_csv(d / "weights" / "manifest.csv").drop(columns="path") for d in (cut, whole)]
    pd.testing.assert_frame_equal(*manifests)
    assert Archive(cut).clients(3) == [0, 1, 2, 3]
